"""timm builds the REAF networks: ``import reaf_lightning.timm``, then ``timm.create_model``.

Importing this module registers every ``reaf_*`` network of the package's
registry with timm's public ``timm.models.register_model``, the way timm's own
model modules register theirs when imported::

    import timm
    import reaf_lightning.timm  # noqa: F401  (registers reaf_resnet18, reaf_resnet50, ...)

    net = timm.create_model("reaf_resnet50", num_classes=100)

Only the ``reaf_*`` networks are registered: the plain names (``resnet50``,
``mobilenet_v2``, ...) are timm's own models and stay timm's. No pretrained
weights are published (``pretrained=True`` is refused). Not part of the paper.
"""

from __future__ import annotations

import timm

from reaf_lightning.models import list_models
from reaf_lightning.models.hub import entrypoint

__all__ = ["REGISTERED"]


def _register() -> list[str]:
    registered = []
    for name in list_models("reaf_*"):
        if name not in timm.list_models(name):
            build = entrypoint(name)
            build.__module__ = __name__
            timm.models.register_model(build)
            registered.append(name)
    return registered


#: The names this import registered with timm (empty when they were registered already).
REGISTERED: list[str] = _register()
