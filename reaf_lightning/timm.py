"""timm builds the REAF networks: ``import reaf_lightning.timm``, then ``timm.create_model``.

Importing this module registers every ``reaf_*`` network of the package's
registry with timm's public ``timm.models.register_model``, the way timm's own
model modules register theirs when imported::

    import timm
    import reaf_lightning.timm  # noqa: F401  (registers reaf_resnet18, reaf_resnet50, ...)

    net = timm.create_model("reaf_resnet50", num_classes=100)
    backbone = timm.create_model("reaf_resnet50", features_only=True, out_indices=(1, 2, 3, 4))

timm's standard model arguments mean what they mean for timm's own ResNets:
``num_classes`` (0: no classifier), ``in_chans``, ``drop_rate`` and
``global_pool`` go to the network (``reaf_lightning.models.head``);
``features_only`` wraps it in timm's public ``timm.models.FeatureListNet``, which
returns the feature maps of the network's ``feature_info`` picked by
``out_indices`` (default: all five, the stem's and each stage's output).

Only the ``reaf_*`` networks are registered: the plain names (``resnet50``,
``mobilenet_v2``, ...) are timm's own models and stay timm's. No pretrained
weights are published (``pretrained=True`` is refused). Not part of the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import timm
from torch import nn

from reaf_lightning.layers.spec import is_int
from reaf_lightning.models import list_models
from reaf_lightning.models.hub import entrypoint

__all__ = ["REGISTERED", "feature_extractor"]


def feature_extractor(
    model: nn.Module, out_indices: int | Sequence[int] | None = None, name: str = "network"
) -> nn.Module:
    """``model`` as timm's ``features_only`` network returns it: a list of feature maps.

    Args:
        model: a package network (it has timm's ``feature_info``).
        out_indices: which entries of ``model.feature_info``: indices, or how many of the
            last; ``None``: all.
        name: the network's name, for messages.
    """
    count = len(model.feature_info)
    if out_indices is None:
        out_indices = tuple(range(count))
    valid = (is_int(out_indices) and 1 <= out_indices <= count) or (
        isinstance(out_indices, Sequence)
        and len(out_indices) > 0
        and all(is_int(i) and 0 <= i < count for i in out_indices)
    )
    if not valid:
        raise ValueError(
            f"{name}: out_indices={out_indices!r} must be indices of its {count} feature maps "
            f"(0 to {count - 1}) or how many of the last (1 to {count})"
        )
    # A feature map inside a Sequential (MobileNetV2's features.N) needs it flattened.
    flatten = any("." in info["module"] for info in model.feature_info)
    return timm.models.FeatureListNet(model, out_indices=out_indices, flatten_sequential=flatten)


def _timm_entrypoint(name: str) -> Callable[..., nn.Module]:
    """``entrypoint(name)`` with timm's ``features_only`` and ``out_indices``."""
    build = entrypoint(name)

    def create(
        pretrained: bool = False,
        features_only: bool = False,
        out_indices: int | Sequence[int] | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        if out_indices is not None and not features_only:
            raise ValueError(f"{name}: out_indices={out_indices!r} needs features_only=True")
        model = build(pretrained, **kwargs)
        return feature_extractor(model, out_indices, name) if features_only else model

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = build.__doc__
    return create


def _register() -> list[str]:
    registered = []
    for name in list_models("reaf_*"):
        if name not in timm.list_models(name):
            timm.models.register_model(_timm_entrypoint(name))
            registered.append(name)
    return registered


#: The names this import registered with timm (empty when they were registered already).
REGISTERED: list[str] = _register()
