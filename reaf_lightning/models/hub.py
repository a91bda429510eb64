"""The zoo for ``torch.hub`` and timm: entry points that build registry networks by name.

* ``hubconf.py`` at the repository root exposes :func:`hub_entrypoints`, so
  ``torch.hub.load(repo_dir, "reaf_resnet50", source="local")`` builds the
  network (``torch.hub.list(repo_dir, source="local")`` lists them).
* With timm installed, ``import reaf_lightning.timm`` makes ``timm.create_model``
  build the REAF networks, with timm's ``features_only`` (``reaf_lightning.timm``).

No pretrained weights are published: ``pretrained=True`` is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["entrypoint", "hub_entrypoints"]


def entrypoint(name: str) -> Callable[..., nn.Module]:
    """A function ``name(pretrained=False, **kwargs)`` building the registry network ``name``."""

    def build(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        from reaf_lightning.models import create_model

        if pretrained:
            raise ValueError(f"{name}: no pretrained weights are published; use pretrained=False")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's
            kwargs.pop(key, None)
        return create_model(name, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"``reaf_lightning.models.create_model({name!r}, **kwargs)`` (no weights)."
    return build


def hub_entrypoints() -> dict[str, Callable[..., nn.Module]]:
    """One ``torch.hub`` entry point per registry name."""
    from reaf_lightning.models import list_models

    return {name: entrypoint(name) for name in list_models()}
