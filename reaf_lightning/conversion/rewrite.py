"""Rebuild a network's layers at new widths, with REAF in the chosen convolutions.

Only the modules whose shapes change are replaced; every other module keeps
its object and its weights. A replaced layer is freshly initialised (its old
weights have no meaning at another width), except a convolution that becomes
REAF at its own width: it keeps the weights of the connections REAF keeps.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from reaf_lightning.layers import REAFConv2d, REAFSpec

__all__ = ["apply_layout", "meta_copy", "reaf_from_conv", "square"]


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
    """A REAF conv with ``conv``'s kernel, stride, padding, dilation and bias, at new widths.

    At ``conv``'s own widths the compact weight takes ``conv``'s weights of the connections
    REAF keeps (output group ``l`` reads the input groups of ``E_l``), so converting a
    trained network starts from its weights.
    """
    weight = conv.weight
    reaf = REAFConv2d(
        in_channels,
        out_channels,
        square(conv.kernel_size),
        *spec,
        stride=square(conv.stride),
        padding=conv_padding(conv),
        dilation=square(conv.dilation),
        bias=conv.bias is not None,
        impl=impl,
    ).to(device=weight.device, dtype=weight.dtype)
    if (in_channels, out_channels) == (conv.in_channels, conv.out_channels) and not (
        weight.is_meta
    ):
        with torch.no_grad():
            a_in, b_out = reaf.in_per_group, reaf.out_per_group
            for l, groups in enumerate(spec.combinations()):
                columns = torch.cat(
                    [torch.arange(g * a_in, (g + 1) * a_in, device=weight.device) for g in groups]
                )
                rows = slice(l * b_out, (l + 1) * b_out)
                reaf.weight[rows] = weight[rows][:, columns]
            if conv.bias is not None:
                reaf.bias.copy_(conv.bias)
    return reaf


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
        conv = nn.Conv2d(
            in_width,
            out_width,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            groups=in_width if depthwise and module.groups > 1 else module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            **factory,
        )
        # Ours: torchvision's convolution init (ResNet, VGG, MobileNetV2, RegNet all use it).
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        return conv
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

    Modules named in ``reaf_layers`` become :class:`REAFConv2d` of ``spec``.
    """
    for name, (in_width, out_width) in layout.items():
        module = model.get_submodule(name)
        if name in reaf_layers:
            new = reaf_from_conv(module, in_width, out_width, spec, impl)
        else:
            new = _resized(module, in_width, out_width)
        if new is not None:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)
    return model


def gcd_all(numbers: list[int]) -> int:
    return math.gcd(*numbers) if numbers else 1
