"""The named models of the paper (Tables 3-7) and tiny ``test_*`` variants for CI.

Each name is a few lines that fix the architecture and choose defaults; every
default can be overridden by keyword (e.g. Table 3's widths). Defaults of the
REAF models are the paper's headline settings (C=72, 4-3-4; WideResNet C=136).
Plain names are baselines: passing REAF arguments to them is an error, so a
config cannot silently train a baseline under a REAF name or vice versa.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from reaf_lightning.layers import REAF_IMPLS, parse_reaf
from reaf_lightning.models.mobilenetv2 import MobileNetV2
from reaf_lightning.models.registry import register_model
from reaf_lightning.models.resnet import ResNet

_REAF_ARGS = ("reaf", "reaf_convs")
_REAF_PLUS_ARGS = ("reaf_plus_groups",)


def _check_impl(name: str, kwargs: dict[str, Any]) -> None:
    impl = kwargs.get("impl", "auto")
    if impl not in REAF_IMPLS:
        raise ValueError(f"{name}: impl={impl!r} is not one of {', '.join(REAF_IMPLS)}")


def _build(
    cls: type[nn.Module],
    name: str,
    kwargs: dict[str, Any],
    fixed: dict[str, Any],
    defaults: dict[str, Any],
    forbidden: tuple[str, ...] = (),
) -> nn.Module:
    """Merge ``defaults < kwargs``, refuse ``fixed``/``forbidden``/unknown keys, build ``cls``."""
    valid = set(inspect.signature(cls.__init__).parameters) - {"self"} - set(fixed)
    valid -= set(forbidden)
    valid.add("impl")  # execution strategy: accepted by every model, used by REAF convs only
    for key in kwargs:
        if key not in valid:
            why = " (a REAF argument: use the reaf_* model)" if key in forbidden else ""
            raise ValueError(
                f"{name}: unexpected argument {key!r}{why}; valid: {', '.join(sorted(valid))}"
            )
    _check_impl(name, kwargs)
    args = {**defaults, **kwargs, **fixed}
    if args.get("reaf") is not None:
        args["reaf"] = parse_reaf(args["reaf"])
    if cls is MobileNetV2:
        args.pop("impl", None)
    return cls(**args)


def _resnet(
    name: str,
    block: str,
    layers: tuple[int, ...],
    kwargs: dict[str, Any],
    family: str = "plain",
    **defaults: Any,
) -> nn.Module:
    """Build a ResNet; ``family`` ("plain", "reaf", "reaf_plus") decides which args are allowed."""
    forbidden = () if family == "reaf" else _REAF_ARGS
    forbidden += () if family == "reaf_plus" else _REAF_PLUS_ARGS
    if family == "reaf" and kwargs.get("reaf", defaults.get("reaf")) is None:
        raise ValueError(f"{name}: reaf must be a 'G_I-G_M-G_O' setting, not None")
    return _build(ResNet, name, kwargs, {"block": block, "layers": layers}, defaults, forbidden)


# --- plain baselines ----------------------------------------------------------------------


@register_model
def resnet18(**kwargs: Any) -> nn.Module:
    return _resnet("resnet18", "basic", (2, 2, 2, 2), kwargs)


@register_model
def resnet34(**kwargs: Any) -> nn.Module:
    return _resnet("resnet34", "basic", (3, 4, 6, 3), kwargs)


@register_model
def resnet50(**kwargs: Any) -> nn.Module:
    return _resnet("resnet50", "bottleneck", (3, 4, 6, 3), kwargs)


@register_model
def resnet101(**kwargs: Any) -> nn.Module:
    return _resnet("resnet101", "bottleneck", (3, 4, 23, 3), kwargs)


@register_model
def wide_resnet50_2(**kwargs: Any) -> nn.Module:
    return _resnet("wide_resnet50_2", "bottleneck", (3, 4, 6, 3), kwargs, width=128)


@register_model
def resnext50_32x4d(**kwargs: Any) -> nn.Module:
    return _resnet("resnext50_32x4d", "bottleneck", (3, 4, 6, 3), kwargs, width=128, groups=32)


@register_model
def resnext101_32x4d(**kwargs: Any) -> nn.Module:
    return _resnet("resnext101_32x4d", "bottleneck", (3, 4, 23, 3), kwargs, width=128, groups=32)


@register_model
def mobilenet_v2(**kwargs: Any) -> nn.Module:
    return _build(MobileNetV2, "mobilenet_v2", kwargs, {}, {}, _REAF_PLUS_ARGS)


# --- REAF (paper Tables 3-6) ----------------------------------------------------------------


@register_model
def reaf_resnet18(**kwargs: Any) -> nn.Module:
    return _resnet(
        "reaf_resnet18", "basic", (2, 2, 2, 2), kwargs, family="reaf", width=72, reaf="4-3-4"
    )


@register_model
def reaf_resnet34(**kwargs: Any) -> nn.Module:
    return _resnet(
        "reaf_resnet34", "basic", (3, 4, 6, 3), kwargs, family="reaf", width=72, reaf="4-3-4"
    )


@register_model
def reaf_resnet50(**kwargs: Any) -> nn.Module:
    return _resnet(
        "reaf_resnet50", "bottleneck", (3, 4, 6, 3), kwargs, family="reaf", width=72, reaf="4-3-4"
    )


@register_model
def reaf_resnet101(**kwargs: Any) -> nn.Module:
    return _resnet(
        "reaf_resnet101", "bottleneck", (3, 4, 23, 3), kwargs, family="reaf", width=72, reaf="4-3-4"
    )


@register_model
def reaf_wide_resnet50(**kwargs: Any) -> nn.Module:
    return _resnet(
        "reaf_wide_resnet50",
        "bottleneck",
        (3, 4, 6, 3),
        kwargs,
        family="reaf",
        width=136,
        reaf="4-3-4",
    )


# --- REAF+ (paper Table 7) -------------------------------------------------------------------


@register_model
def reaf_plus_resnext50_32x4d(**kwargs: Any) -> nn.Module:
    return _resnet(
        "reaf_plus_resnext50_32x4d",
        "bottleneck",
        (3, 4, 6, 3),
        kwargs,
        family="reaf_plus",
        width=128,
        groups=32,
        reaf_plus_groups=2,
    )


@register_model
def reaf_plus_mobilenet_v2(**kwargs: Any) -> nn.Module:
    return _build(MobileNetV2, "reaf_plus_mobilenet_v2", kwargs, {}, {"reaf_plus_groups": 2})


# --- tiny variants for tests and CPU smoke runs ---------------------------------------------

_TINY = {"base_channels": 8, "stem": "cifar", "num_classes": 10}


@register_model
def test_resnet(**kwargs: Any) -> nn.Module:
    """Tiny plain ResNet (BasicBlock, one block per stage, 8 base channels)."""
    return _resnet("test_resnet", "basic", (1, 1, 1, 1), kwargs, width=8, **_TINY)


@register_model
def test_reaf_resnet(**kwargs: Any) -> nn.Module:
    """Tiny REAF ResNet (Bottleneck, 4-3-4 middle conv)."""
    return _resnet(
        "test_reaf_resnet",
        "bottleneck",
        (1, 1, 1, 1),
        kwargs,
        family="reaf",
        width=12,
        reaf="4-3-4",
        **_TINY,
    )


@register_model
def test_reaf_plus_resnet(**kwargs: Any) -> nn.Module:
    """Tiny REAF+ ResNeXt (Bottleneck, groups=4, g_O=2 on the third conv)."""
    return _resnet(
        "test_reaf_plus_resnet",
        "bottleneck",
        (1, 1, 1, 1),
        kwargs,
        family="reaf_plus",
        width=16,
        groups=4,
        reaf_plus_groups=2,
        **_TINY,
    )
