"""timm builds the REAF networks: ``timm.create_model("reaf_resnet50")`` after ``import
reaf_lightning``.

Registered with timm's public ``timm.models.register_model``, under their
registry names; only the ``reaf_*`` networks, because the plain names
(``resnet50``, ``mobilenet_v2``, ...) are timm's own models and stay timm's.
``import reaf_lightning`` does not import timm (that takes seconds): it calls
:func:`register_with_timm_on_import`, which registers at once when timm is
already imported and otherwise right after ``import timm`` runs. timm lists
this module as the models' home (it appends their names to ``__all__``).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

__all__ = ["register_timm_models", "register_with_timm_on_import"]


def register_timm_models(timm: ModuleType) -> list[str]:
    """Register the ``reaf_*`` networks with timm (``timm.models.register_model``)."""
    from reaf_lightning.hub import entrypoint
    from reaf_lightning.models import list_models

    registered = []
    for name in list_models("reaf_*"):
        if name not in timm.list_models(name):
            build = entrypoint(name)
            build.__module__ = __name__
            timm.models.register_model(build)
            registered.append(name)
    return registered


class _RegisterWhenImported:  # a sys.meta_path finder (importlib.abc.MetaPathFinder)
    """Runs :func:`register_timm_models` right after ``import timm`` executes, once."""

    def find_spec(self, fullname: str, path: object, target: object = None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            register_timm_models(module)

        spec.loader.exec_module = exec_module
        return spec


def register_with_timm_on_import() -> None:
    """Register now if timm is imported, else when it is (without importing it here)."""
    if "timm" in sys.modules:
        register_timm_models(sys.modules["timm"])
    elif not any(isinstance(f, _RegisterWhenImported) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterWhenImported())
