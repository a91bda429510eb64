"""An independent REAF reference: the paper's Eq. 5-6 as a dense convolution with a mask.

Written from the paper, not from the package: the input channels form ``G_I``
groups of ``A_in``; output group ``l`` (``B_out`` channels) reads the input groups
of ``E_l``, the ``l``-th combination of ``G_M`` groups in
``itertools.combinations`` order (the package's documented choice), concatenated
in increasing order, which is the column order of the compact weight.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn


def reaf_columns(in_channels: int, out_channels: int, g_i: int, g_m: int) -> list[list[int]]:
    """For each output channel, the input channels it reads, in compact-weight column order."""
    combinations = list(itertools.combinations(range(g_i), g_m))
    a_in, b_out = in_channels // g_i, out_channels // len(combinations)
    assert a_in * g_i == in_channels and b_out * len(combinations) == out_channels
    return [
        [group * a_in + c for group in combinations[o // b_out] for c in range(a_in)]
        for o in range(out_channels)
    ]


def dense_weight(compact: Tensor, in_channels: int, g_i: int, g_m: int) -> Tensor:
    """The dense ``(C_out, C_in, k, k)`` weight of a compact REAF weight (differentiable)."""
    out_channels = compact.shape[0]
    columns = torch.tensor(reaf_columns(in_channels, out_channels, g_i, g_m))
    rows = torch.arange(out_channels)[:, None].expand_as(columns)
    dense = compact.new_zeros(out_channels, in_channels, *compact.shape[2:])
    return dense.index_put((rows, columns), compact)


def connections(module: nn.Module) -> int:
    """Weights per output position of a conv: dense/grouped by its shape, REAF by its columns."""
    from reaf_lightning.layers import REAFConv2d

    if isinstance(module, REAFConv2d):
        columns = reaf_columns(module.in_channels, module.out_channels, module.g_i, module.g_m)
        return sum(len(c) for c in columns) * module.kernel_size**2
    return module.out_channels * module.in_channels // module.groups * math.prod(module.kernel_size)
