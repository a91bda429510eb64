"""One factory for the convolutions a block asks for, so blocks stay agnostic of REAF."""

from __future__ import annotations

from torch import nn

from reaf_lightning.layers.reaf_conv import REAFConv2d
from reaf_lightning.layers.spec import REAFSpec


def create_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    reaf: REAFSpec | None = None,
    impl: str = "auto",
) -> nn.Module:
    """A bias-free conv with "same" padding: REAF when ``reaf`` is given, else ``nn.Conv2d``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: stride.
        groups: ordinary channel groups (ResNeXt); must be 1 when ``reaf`` is given,
            since REAF replaces the grouping.
        reaf: the REAF ``G_I-G_M-G_O`` setting, or ``None`` for an ordinary conv.
        impl: REAF execution strategy (see ``REAFConv2d``).
    """
    padding = (kernel_size - 1) // 2
    if reaf is None:
        return nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
        )
    if groups != 1:
        raise ValueError(
            f"REAF {reaf} replaces channel grouping; groups={groups} must be 1 for a REAF conv"
        )
    return REAFConv2d(
        in_channels, out_channels, kernel_size, reaf, stride=stride, padding=padding, impl=impl
    )
