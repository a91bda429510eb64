"""Name -> constructor registry, as timm's: ``create_model("reaf_resnet50", width=72)``.

Only this package's networks are registered here. A config may also name
``torchvision.<model>`` or ``timm.<model>`` and ask for REAF in it (``convert``):
:func:`reaf_lightning.conversion.sources.build_network` builds every name a config
can give, this registry's among them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

__all__ = ["create_model", "list_models", "register_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name; names are unique."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern``, sorted."""
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`, e.g. ``"reaf_resnet50"``.
        **kwargs (Any): architecture arguments: ``num_classes``, ``stem`` (``"cifar"`` or
            ``"imagenet"``), ``width`` (C), ``out_width`` (C'), ``reaf`` (``"4-3-4"``, a
            tuple or a ``REAFSpec``), ``reaf_convs`` (``"middle"``/``"all"``),
            ``reaf_plus_groups``, ``impl``.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or invalid arguments.
    """
    if name not in _MODELS:
        dotted = " (a dotted name: conversion.sources.build_network)" if "." in name else ""
        raise ValueError(f"unknown model {name!r}{dotted}; valid names: {', '.join(list_models())}")
    return _MODELS[name](**kwargs)
