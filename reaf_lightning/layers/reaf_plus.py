"""REAF+ (paper §III-E, Eq. 8): one (BN, activation) pair per output-channel group.

A plain block feeds a convolution through a single ``BN -> ReLU``. REAF+ feeds
output-channel group ``l`` (of ``g_o`` equal groups) from its own
``ReLU(BN_l(x))``, so different output groups see differently rectified
versions of the same input: less feature reuse at the cost of
``(g_o - 1) * 2 * C_in`` extra affine parameters.

Exactness note *(ours)*: in training mode every ``BN_l`` normalises the same
input with the same batch statistics, and their running statistics receive
identical updates. So we normalise once, keep one set of running statistics,
and only the affine ``(gamma_l, beta_l)`` differ per group. This equals an
explicit loop over ``g_o`` independent ``nn.BatchNorm2d`` modules (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["REAFPlusConv2d"]


class REAFPlusConv2d(nn.Module):
    """``g_o`` (BatchNorm, activation) pairs on the input, each feeding one output group.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``; must be divisible by ``groups_out``.
        kernel_size: square kernel size of the convolution.
        groups_out: number of output groups ``g_O`` (the paper uses 2).
        stride: convolution stride.
        padding: ``None`` means ``(k - 1) // 2``.
        activation: the activation module class after each BN (``nn.ReLU`` in
            ResNeXt, ``nn.ReLU6`` in MobileNetV2).
        eps: BatchNorm epsilon.
        momentum: BatchNorm momentum.

    The convolution weight ``(C_out, C_in, k, k)`` has the layout of a dense
    conv: rows ``l * C_out / g_o:(l + 1) * C_out / g_o`` belong to group ``l``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        groups_out: int = 2,
        stride: int = 1,
        padding: int | None = None,
        activation: type[nn.Module] = nn.ReLU,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if not isinstance(groups_out, int) or groups_out < 1:
            raise ValueError(f"REAF+ groups_out must be a positive integer, got {groups_out!r}")
        if out_channels % groups_out:
            raise ValueError(
                f"REAF+ g_O={groups_out}: out_channels={out_channels} is not divisible by g_O"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.groups_out = groups_out
        self.stride = stride
        self.padding = (kernel_size - 1) // 2 if padding is None else padding
        self.eps = eps
        self.momentum = momentum
        self.activation = activation(inplace=True) if _accepts_inplace(activation) else activation()

        self.bn_weight = nn.Parameter(torch.ones(groups_out, in_channels))
        self.bn_bias = nn.Parameter(torch.zeros(groups_out, in_channels))
        self.register_buffer("running_mean", torch.zeros(in_channels))
        self.register_buffer("running_var", torch.ones(in_channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        # Normalise once (shared statistics), then apply each group's affine + activation.
        normalised = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            weight=None,
            bias=None,
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
        )
        step = self.out_channels // self.groups_out
        outputs = []
        for l in range(self.groups_out):
            gamma = self.bn_weight[l][None, :, None, None]
            beta = self.bn_bias[l][None, :, None, None]
            activated = self.activation(torch.addcmul(beta, normalised, gamma))
            outputs.append(
                F.conv2d(
                    activated,
                    self.weight[l * step : (l + 1) * step],
                    None,
                    self.stride,
                    self.padding,
                )
            )
        return torch.cat(outputs, dim=1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"groups_out={self.groups_out}, stride={self.stride}"
        )


def _accepts_inplace(activation: type[nn.Module]) -> bool:
    return activation in (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.SiLU)
