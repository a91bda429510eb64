"""Rebuild a network's layers at new widths, with REAF in the chosen convolutions.

Only the modules whose shapes change are replaced; every other module keeps
its object and its weights. A module registered under several names is replaced
once and the new module set under every one of them, so what was shared stays
shared. A replaced layer is freshly initialised (its old
weights have no meaning at another width), except a convolution that becomes
REAF at its own width, where ``REAFConv2d.from_conv`` decides: it keeps the
weights where REAF keeps the convolution's connectivity (``G_M = G_I`` from a
dense conv, ``g-1-g`` from one with ``groups=g``) and starts afresh otherwise.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from reaf_lightning.layers import REAFConv2d, REAFSpec

__all__ = ["apply_layout", "meta_copy", "module_names", "reaf_from_conv", "square"]


def square(value: int | tuple[int, ...] | str) -> int | None:
    """The one number of a square ``nn.Conv2d`` argument (``3`` or ``(3, 3)``), else ``None``."""
    if isinstance(value, int):
        return value
    if isinstance(value, tuple) and len(set(value)) == 1 and isinstance(value[0], int):
        return value[0]
    return None


def conv_padding(conv: nn.Conv2d) -> int | None:
    """``conv``'s zero padding as one int (``"same"``/``"valid"`` resolved), or ``None``."""
    k, dilation = square(conv.kernel_size), square(conv.dilation)
    if conv.padding == "valid":
        return 0
    if conv.padding == "same":
        span = dilation * (k - 1)
        return span // 2 if span % 2 == 0 else None
    return square(conv.padding)


def reaf_from_conv(
    conv: nn.Conv2d, in_channels: int, out_channels: int, spec: REAFSpec, impl: str
) -> REAFConv2d:
    """``REAFConv2d.from_conv`` of ``conv`` at new widths (its grouping, if any, replaced).

    At ``conv``'s own widths, with a dense ``conv`` or a grouped one that ``spec`` reproduces
    (``g-1-g``), ``from_conv`` decides what the weights become; otherwise the layer is new.
    """
    same_widths = (in_channels, out_channels) == (conv.in_channels, conv.out_channels)
    if not same_widths or conv.groups not in (1, spec.g_i) or spec.g_m != 1 < conv.groups:
        conv = _plain_conv(conv, in_channels, out_channels, groups=1)
    return REAFConv2d.from_conv(conv, spec, impl=impl)


def _plain_conv(conv: nn.Conv2d, in_channels: int, out_channels: int, groups: int) -> nn.Conv2d:
    """An ``nn.Conv2d`` with ``conv``'s geometry at new widths, torchvision-initialised."""
    weight = conv.weight
    new = nn.Conv2d(
        in_channels,
        out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups=groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    # Ours: torchvision's convolution init (ResNet, VGG, MobileNetV2, RegNet all use it).
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers live on ``meta`` (no data copied)."""
    memo: dict[int, object] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        empty = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = (
            nn.Parameter(empty, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
        )
    return copy.deepcopy(model, memo)


def _resized(module: nn.Module, in_width: int | None, out_width: int | None) -> nn.Module | None:
    """``module`` rebuilt at new widths with its other settings, or ``None`` if unchanged."""
    weight = getattr(module, "weight", None)
    factory = {"device": weight.device, "dtype": weight.dtype} if weight is not None else {}
    if isinstance(module, nn.Conv2d):
        if (in_width, out_width) == (module.in_channels, module.out_channels):
            return None
        depthwise = module.groups == module.in_channels == module.out_channels
        groups = in_width if depthwise and module.groups > 1 else module.groups
        return _plain_conv(module, in_width, out_width, groups)
    if isinstance(module, nn.BatchNorm2d):
        if in_width == module.num_features:
            return None
        norm = nn.BatchNorm2d(
            in_width,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            **(factory or {"device": next(module.buffers()).device}),
        )
        return norm
    if isinstance(module, nn.Linear):
        if in_width == module.in_features:
            return None
        return nn.Linear(in_width, module.out_features, module.bias is not None, **factory)
    raise TypeError(f"cannot resize {type(module).__name__}")  # the graph only records the above


def apply_layout(
    model: nn.Module,
    layout: dict[str, tuple[int | None, int | None]],
    reaf_layers: set[str],
    spec: REAFSpec,
    impl: str,
) -> nn.Module:
    """Replace, in place, the modules of ``layout`` (name -> new in/out width) that change.

    Modules named in ``reaf_layers`` become :class:`REAFConv2d` of ``spec``. ``layout``
    names each module once (its first name); the new module replaces it under all of them.
    """
    names = module_names(model)
    for name, (in_width, out_width) in layout.items():
        module = model.get_submodule(name)
        if name in reaf_layers:
            new = reaf_from_conv(module, in_width, out_width, spec, impl)
        else:
            new = _resized(module, in_width, out_width)
        for alias in names[id(module)] if new is not None else ():
            parent_name, _, child = alias.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)
    return model


def module_names(model: nn.Module) -> dict[int, list[str]]:
    """Every name each module of ``model`` is registered under (by ``id``), first name first."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


def gcd_all(numbers: list[int]) -> int:
    return math.gcd(*numbers) if numbers else 1
