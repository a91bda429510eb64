"""Which convolutions ``convert`` may turn into REAF, and why each other one is skipped.

Eligible (ours; the paper applies REAF to ResNet's 3x3 convolutions, Table 1):
an ``nn.Conv2d`` (exactly that class: a subclass may compute something else)
with a square kernel larger than 1x1, square stride and dilation, one
symmetric zero padding, ``groups == 1``, selected by ``include``/``exclude``,
whose input channels divide by ``G_I`` and output channels by ``G_O``.
``pointwise=True`` adds 1x1 convolutions; ``grouped=True`` adds grouped
(not depthwise) convolutions, whose grouping REAF then replaces (a group
convolution is REAF with ``G_M = 1``, paper §III-D). Depthwise convolutions
never are: each output channel already reads one input channel.
"""

from __future__ import annotations

import fnmatch

from torch import nn

from reaf_lightning.conversion.rewrite import conv_padding, square
from reaf_lightning.layers import REAFConv2d, REAFSpec

__all__ = ["eligible", "indivisible", "shape_reason"]


def eligible(
    model: nn.Module,
    names: dict[int, list[str]],
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    pointwise: bool,
    grouped: bool,
    skipped: dict[str, str],
) -> dict[str, nn.Conv2d]:
    """The convolutions that may become REAF, before divisibility; the rest go to ``skipped``.

    A module registered under several names is one candidate, under its first name (as
    ``named_modules`` and ``torch.fx`` name it); a pattern matching any of its names counts.

    Raises:
        ValueError: an ``include`` or ``exclude`` pattern that matches no module name (a
            typo would otherwise convert everything or nothing without a word).
    """
    every_name = [name for group in names.values() for name in group]  # "" is the model
    for option, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in every_name):
                shown = ", ".join(every_name[1:6]) + (", ..." if len(every_name) > 6 else "")
                raise ValueError(
                    f"convert: {option} pattern {pattern!r} matches no module of "
                    f"{type(model).__name__} (its module names: {shown}; patterns are globs "
                    "such as 'layer3.*')"
                )
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, REAFConv2d):
            skipped[name] = "already a REAF convolution"
            continue
        if not isinstance(module, nn.Conv2d):
            continue
        every = names.get(id(module), [name])
        reason = shape_reason(module, pointwise, grouped)
        if type(module) is not nn.Conv2d:
            reason = f"{type(module).__name__} is a subclass of nn.Conv2d (may compute otherwise)"
        elif not any(fnmatch.fnmatchcase(n, p) for n in every for p in include):
            reason = f"not matched by include={list(include)}"
        elif any(fnmatch.fnmatchcase(n, p) for n in every for p in exclude):
            reason = f"matched by exclude={list(exclude)}"
        if reason:
            skipped[name] = reason
        else:
            found[name] = module
    return found


def shape_reason(conv: nn.Conv2d, pointwise: bool, grouped: bool) -> str | None:
    """Why ``conv``'s geometry keeps it from becoming REAF, or ``None``."""
    k = square(conv.kernel_size)
    if k is None:
        return f"kernel {conv.kernel_size} is not square"
    if k == 1 and not pointwise:
        return "1x1 convolution (pointwise=True converts it)"
    if square(conv.stride) is None or square(conv.dilation) is None:
        return f"stride {conv.stride} / dilation {conv.dilation} not square"
    if conv.padding_mode != "zeros" or conv_padding(conv) is None:
        return f"padding {conv.padding!r} ({conv.padding_mode}) is not one symmetric zero padding"
    if conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels:
        return "depthwise convolution (each output channel reads one input channel)"
    if conv.groups > 1 and not grouped:
        return f"grouped convolution, groups={conv.groups} (grouped=True replaces the grouping)"
    return None


def indivisible(in_channels: int, out_channels: int, spec: REAFSpec) -> str | None:
    """Why these widths cannot be REAF ``spec``'s (not divisible into its groups), or ``None``."""
    if in_channels % spec.g_i:
        return f"in_channels={in_channels} is not divisible by G_I={spec.g_i}"
    if out_channels % spec.g_o:
        return f"out_channels={out_channels} is not divisible by G_O={spec.g_o}"
    return None
