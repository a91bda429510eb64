"""REAF+ (Eq. 8) against the literal loop of g_O independent (BatchNorm, activation, conv)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reaf_lightning.layers import REAFPlusConv2d


class _LoopREAFPlus(nn.Module):
    """The literal definition (Eq. 8): g_O independent (BN_l, act, conv_l), concatenated."""

    def __init__(self, layer: REAFPlusConv2d, activation: type[nn.Module]) -> None:
        super().__init__()
        g, c_out = layer.groups_out, layer.out_channels
        self.bns = nn.ModuleList(nn.BatchNorm2d(layer.in_channels) for _ in range(g))
        self.convs = nn.ModuleList(
            nn.Conv2d(
                layer.in_channels,
                c_out // g,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                bias=False,
            )
            for _ in range(g)
        )
        self.act = activation()
        with torch.no_grad():
            for l in range(g):
                self.bns[l].weight.copy_(layer.bn_weight[l])
                self.bns[l].bias.copy_(layer.bn_bias[l])
                self.convs[l].weight.copy_(layer.weight[l * c_out // g : (l + 1) * c_out // g])

    def forward(self, x):
        return torch.cat([conv(self.act(bn(x))) for bn, conv in zip(self.bns, self.convs)], 1)


@pytest.mark.parametrize("activation,groups,k", [(nn.ReLU, 2, 1), (nn.ReLU6, 3, 3)])
def test_reaf_plus_equals_loop(activation, groups, k) -> None:
    torch.manual_seed(4)
    layer = REAFPlusConv2d(6, 12, k, groups_out=groups, activation=activation)
    with torch.no_grad():
        layer.bn_weight.uniform_(0.5, 1.5)
        layer.bn_bias.uniform_(-0.5, 0.5)
    reference = _LoopREAFPlus(layer, activation)
    for _ in range(3):  # training mode: outputs, gradients and running stats
        x = torch.randn(4, 6, 5, 5) * 2 + 1
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        y1, y2 = layer(x1), reference(x2)
        torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-5)
        y1.sum().backward()
        y2.sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
        for l in range(groups):
            torch.testing.assert_close(layer.bn_weight.grad[l], reference.bns[l].weight.grad)
            torch.testing.assert_close(layer.bn_bias.grad[l], reference.bns[l].bias.grad)
        layer.zero_grad()
        reference.zero_grad()
    for bn in reference.bns:
        torch.testing.assert_close(layer.running_mean, bn.running_mean)
        torch.testing.assert_close(layer.running_var, bn.running_var)
    layer.eval()
    reference.eval()
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-4, atol=1e-5)


def test_reaf_plus_extra_parameters() -> None:
    """(g_O - 1) * 2 * C_in more parameters than one BN + dense conv (paper §III-B)."""
    layer = REAFPlusConv2d(32, 64, 1, groups_out=2)
    plain = 2 * 32 + 64 * 32
    assert sum(p.numel() for p in layer.parameters()) - plain == (2 - 1) * 2 * 32
    with pytest.raises(ValueError, match="out_channels=63 is not divisible by g_O"):
        REAFPlusConv2d(32, 63, 1, groups_out=2)
