"""The named models of the paper (Tables 1-7) and tiny ``test_*`` variants for CI.

Each name fixes an architecture and chooses defaults; every default can be
overridden by keyword (e.g. Table 3's widths). Defaults of the REAF models are
the paper's headline settings (C = 72, 4-3-4: Table 1; WideResNet C = 136:
Table 5; REAF on all convs C = 64: Table 2). Plain names are baselines: passing
REAF arguments to them is an error, so a config cannot silently train a
baseline under a REAF name or vice versa. Where a name's default width is our
choice rather than the paper's, its docstring says why (``docs/paper_vs_ours.md``).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from reaf_lightning.layers import check_impl
from reaf_lightning.models.mobilenetv2 import MobileNetV2
from reaf_lightning.models.registry import register_model
from reaf_lightning.models.resnet import ResNet

_REAF_ARGS = ("reaf", "reaf_convs")
_REAF_PLUS_ARGS = ("reaf_plus_groups",)
_BASIC = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
_BOTTLENECK = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


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
    check_impl(kwargs.get("impl", "auto"))  # where it enters: a plain network has no REAF conv
    args = {**defaults, **kwargs, **fixed}
    if cls is MobileNetV2:
        args.pop("impl", None)
    return cls(**args)


def _resnet(
    name: str,
    depth: int,
    kwargs: dict[str, Any],
    takes_reaf: bool = False,
    takes_reaf_plus: bool = False,
    **defaults: Any,
) -> nn.Module:
    """Build a ResNet of ``depth`` that accepts REAF and/or REAF+ arguments or neither."""
    forbidden = (() if takes_reaf else _REAF_ARGS) + (() if takes_reaf_plus else _REAF_PLUS_ARGS)
    if takes_reaf and kwargs.get("reaf", defaults.get("reaf")) is None:
        raise ValueError(f"{name}: reaf must be a 'G_I-G_M-G_O' setting, not None")
    block, layers = (
        ("basic", _BASIC[depth]) if depth in _BASIC else ("bottleneck", _BOTTLENECK[depth])
    )
    return _build(ResNet, name, kwargs, {"block": block, "layers": layers}, defaults, forbidden)


# --- plain baselines (paper Tables 1, 3-5, 7) ------------------------------------------------


@register_model
def resnet18(**kwargs: Any) -> nn.Module:
    return _resnet("resnet18", 18, kwargs)


@register_model
def resnet34(**kwargs: Any) -> nn.Module:
    return _resnet("resnet34", 34, kwargs)


@register_model
def resnet50(**kwargs: Any) -> nn.Module:
    return _resnet("resnet50", 50, kwargs)


@register_model
def resnet101(**kwargs: Any) -> nn.Module:
    return _resnet("resnet101", 101, kwargs)


@register_model
def wide_resnet50_2(**kwargs: Any) -> nn.Module:
    return _resnet("wide_resnet50_2", 50, kwargs, width=128)


@register_model
def resnext50_32x4d(**kwargs: Any) -> nn.Module:
    return _resnet("resnext50_32x4d", 50, kwargs, width=128, groups=32)


@register_model
def resnext101_32x4d(**kwargs: Any) -> nn.Module:
    return _resnet("resnext101_32x4d", 101, kwargs, width=128, groups=32)


@register_model
def mobilenet_v2(**kwargs: Any) -> nn.Module:
    return _build(MobileNetV2, "mobilenet_v2", kwargs, {}, {}, _REAF_PLUS_ARGS)


# --- group convolution on all three bottleneck convs (paper Tables 2 and 6) -----------------


@register_model
def resnext50_g4_all(**kwargs: Any) -> nn.Module:
    """ResNeXt50 of paper §IV-C: all three bottleneck convs grouped, G = 4.

    C = 128 is ours: it is the width whose parameter count is the paper's
    (20.89 M on ImageNet, 19.04 M on CIFAR-100, both within 0.01 %); the
    paper's "C = 64" gives 10.05 M (``docs/paper_inconsistencies.md``).
    """
    return _resnet("resnext50_g4_all", 50, kwargs, width=128, groups=4, group_convs="all")


@register_model
def resnext101_g4_all(**kwargs: Any) -> nn.Module:
    """ResNeXt101 of paper §IV-C (Table 6): as :func:`resnext50_g4_all`, 33.60 M on CIFAR-100."""
    return _resnet("resnext101_g4_all", 101, kwargs, width=128, groups=4, group_convs="all")


# --- REAF (paper Tables 1-6) -----------------------------------------------------------------


@register_model
def reaf_resnet18(**kwargs: Any) -> nn.Module:
    """REAF on the first 3x3 conv of each basic block (our reading, ``docs/paper_vs_ours.md``)."""
    return _resnet("reaf_resnet18", 18, kwargs, takes_reaf=True, width=72, reaf="4-3-4")


@register_model
def reaf_resnet34(**kwargs: Any) -> nn.Module:
    return _resnet("reaf_resnet34", 34, kwargs, takes_reaf=True, width=72, reaf="4-3-4")


@register_model
def reaf_resnet50(**kwargs: Any) -> nn.Module:
    return _resnet("reaf_resnet50", 50, kwargs, takes_reaf=True, width=72, reaf="4-3-4")


@register_model
def reaf_resnet101(**kwargs: Any) -> nn.Module:
    return _resnet("reaf_resnet101", 101, kwargs, takes_reaf=True, width=72, reaf="4-3-4")


@register_model
def reaf_wide_resnet50(**kwargs: Any) -> nn.Module:
    return _resnet("reaf_wide_resnet50", 50, kwargs, takes_reaf=True, width=136, reaf="4-3-4")


@register_model
def reaf_all_resnet50(**kwargs: Any) -> nn.Module:
    """REAF 4-3-4 on all three bottleneck convs, C = 64 (paper Table 2, §IV-C)."""
    return _resnet(
        "reaf_all_resnet50", 50, kwargs, takes_reaf=True, width=64, reaf="4-3-4", reaf_convs="all"
    )


@register_model
def reaf_all_resnet101(**kwargs: Any) -> nn.Module:
    """REAF 4-3-4 on all three bottleneck convs, C = 64 (paper Table 6)."""
    return _resnet(
        "reaf_all_resnet101", 101, kwargs, takes_reaf=True, width=64, reaf="4-3-4", reaf_convs="all"
    )


# --- REAF+ (paper Table 7; on REAF networks: paper §III-E) ----------------------------------


@register_model
def reaf_plus_resnext50_32x4d(**kwargs: Any) -> nn.Module:
    return _resnet(
        "reaf_plus_resnext50_32x4d",
        50,
        kwargs,
        takes_reaf_plus=True,
        width=128,
        groups=32,
        reaf_plus_groups=2,
    )


@register_model
def reaf_plus_reaf_resnet50(**kwargs: Any) -> nn.Module:
    """REAF 4-3-4 on the middle conv (C = 72) and REAF+ (g_O = 2) on the third conv.

    The paper says REAF+ also improves REAF-based models (§III-E) without a
    table; the placement is the one of its Table 7 (the third conv).
    """
    return _resnet(
        "reaf_plus_reaf_resnet50",
        50,
        kwargs,
        takes_reaf=True,
        takes_reaf_plus=True,
        width=72,
        reaf="4-3-4",
        reaf_plus_groups=2,
    )


@register_model
def reaf_plus_reaf_resnet101(**kwargs: Any) -> nn.Module:
    """As :func:`reaf_plus_reaf_resnet50`, 101 layers."""
    return _resnet(
        "reaf_plus_reaf_resnet101",
        101,
        kwargs,
        takes_reaf=True,
        takes_reaf_plus=True,
        width=72,
        reaf="4-3-4",
        reaf_plus_groups=2,
    )


@register_model
def reaf_plus_mobilenet_v2(**kwargs: Any) -> nn.Module:
    return _build(MobileNetV2, "reaf_plus_mobilenet_v2", kwargs, {}, {"reaf_plus_groups": 2})


# --- tiny variants for tests and CPU smoke runs ---------------------------------------------

_TINY = {"base_channels": 8, "stem": "cifar", "num_classes": 10}


def _tiny(name: str, block: str, kwargs: dict[str, Any], forbidden: tuple, **defaults: Any):
    fixed = {"block": block, "layers": (1, 1, 1, 1)}
    return _build(ResNet, name, kwargs, fixed, {**_TINY, **defaults}, forbidden)


@register_model
def test_resnet(**kwargs: Any) -> nn.Module:
    """Tiny plain ResNet (BasicBlock, one block per stage, 8 base channels)."""
    return _tiny("test_resnet", "basic", kwargs, _REAF_ARGS + _REAF_PLUS_ARGS, width=8)


@register_model
def test_reaf_resnet(**kwargs: Any) -> nn.Module:
    """Tiny REAF ResNet (Bottleneck, 4-3-4 middle conv)."""
    return _tiny("test_reaf_resnet", "bottleneck", kwargs, _REAF_PLUS_ARGS, width=12, reaf="4-3-4")


@register_model
def test_reaf_plus_resnet(**kwargs: Any) -> nn.Module:
    """Tiny REAF+ ResNeXt (Bottleneck, groups=4, g_O=2 on the third conv)."""
    return _tiny(
        "test_reaf_plus_resnet",
        "bottleneck",
        kwargs,
        _REAF_ARGS,
        width=16,
        groups=4,
        reaf_plus_groups=2,
    )
