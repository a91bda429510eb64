"""REAFConv2d and REAFPlusConv2d against independent references (nn.Conv2d, loops)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reaf_lightning.layers import (
    REAFConv2d,
    REAFPlusConv2d,
    autotune_cache,
    parse_reaf,
    resolve_auto_impl,
)

IMPLS = ("masked", "gather", "decompose", "decompose_loop", "loop")


def _copy_pair(reaf: REAFConv2d, conv: nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.copy_(reaf.weight)


def _check_forward_backward(reaf: REAFConv2d, reference: nn.Module, x: torch.Tensor) -> None:
    """Outputs, input gradients and weight gradients agree (weight layouts are identical)."""
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    y1, y2 = reaf(x1), reference(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(y1)
    y1.backward(grad)
    y2.backward(grad)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reaf.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("g,stride,k", [(2, 1, 3), (4, 2, 3), (8, 1, 1), (3, 2, 1)])
def test_gm1_equals_grouped_conv(impl: str, g: int, stride: int, k: int) -> None:
    """G_M = 1, G_I = G_O = g is exactly nn.Conv2d(groups=g) (paper §III-A)."""
    torch.manual_seed(0)
    reaf = REAFConv2d(4 * g, 2 * g, k, g_i=g, g_m=1, stride=stride, impl=impl)
    conv = nn.Conv2d(4 * g, 2 * g, k, stride, (k - 1) // 2, groups=g, bias=False)
    _copy_pair(reaf, conv)
    _check_forward_backward(reaf, conv, torch.randn(3, 4 * g, 9, 9))


@pytest.mark.parametrize("impl", IMPLS)
def test_111_equals_dense_conv(impl: str) -> None:
    torch.manual_seed(1)
    reaf = REAFConv2d(6, 5, 3, g_i=1, g_m=1, g_o=1, stride=2, impl=impl, bias=True)
    conv = nn.Conv2d(6, 5, 3, 2, 1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(reaf.weight)
        conv.bias.copy_(reaf.bias)
    _check_forward_backward(reaf, conv, torch.randn(2, 6, 8, 8))


def _loop_reference(
    x: torch.Tensor, weight: torch.Tensor, g_i: int, g_m: int, stride: int, padding: int
) -> torch.Tensor:
    """Independent reference: output group l = dense conv over the groups in combination l."""
    a_in = x.shape[1] // g_i
    combos = list(itertools.combinations(range(g_i), g_m))
    b_out = weight.shape[0] // len(combos)
    outs = []
    for l, combo in enumerate(combos):
        xin = torch.cat([x[:, j * a_in : (j + 1) * a_in] for j in combo], dim=1)
        outs.append(F.conv2d(xin, weight[l * b_out : (l + 1) * b_out], None, stride, padding))
    return torch.cat(outs, dim=1)


CONFIGS = [
    # (C_in, C_out, k, G_I, G_M, stride)
    (8, 8, 3, 4, 3, 1),  # 4-3-4
    (12, 12, 3, 4, 2, 2),  # 4-2-6, strided
    (16, 70, 3, 8, 4, 1),  # 8-4-70, B_out = 1
    (16, 70, 1, 8, 4, 2),  # 8-4-70, 1x1, strided
    (9, 12, 1, 3, 2, 1),  # 3-2-3, 1x1
    (10, 20, 3, 5, 3, 2),  # 5-3-10
]


@pytest.mark.parametrize("c_in,c_out,k,g_i,g_m,stride", CONFIGS)
def test_impls_agree_with_loop_reference(c_in, c_out, k, g_i, g_m, stride) -> None:
    assert c_out % math.comb(g_i, g_m) == 0
    torch.manual_seed(2)
    x = torch.randn(2, c_in, 7, 7)
    layers = {
        impl: REAFConv2d(c_in, c_out, k, g_i, g_m, stride=stride, impl=impl) for impl in IMPLS
    }
    for layer in layers.values():
        layer.load_state_dict(layers["masked"].state_dict())
    ref = _loop_reference(x, layers["masked"].weight.detach(), g_i, g_m, stride, (k - 1) // 2)
    grads = {}
    for impl, layer in layers.items():
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5, msg=f"impl={impl}")
        y.square().sum().backward()
        grads[impl] = (xi.grad, layer.weight.grad)
        with torch.no_grad():  # the plain-op path torch.compile traces
            torch.testing.assert_close(layer(x), ref, rtol=1e-4, atol=1e-5, msg=f"impl={impl}")
    for impl in IMPLS[1:]:
        torch.testing.assert_close(grads[impl][0], grads["masked"][0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(grads[impl][1], grads["masked"][1], rtol=1e-4, atol=1e-4)


def test_parameter_count_is_compact() -> None:
    layer = REAFConv2d(88, 70, 3, 8, 4)
    assert layer.weight.numel() == 70 * 4 * (88 // 8) * 9
    assert sum(p.numel() for p in layer.parameters()) == layer.weight.numel()


def test_dense_weight_zero_pattern() -> None:
    """Output group l connects to exactly the input groups of combination l."""
    layer = REAFConv2d(8, 4, 1, 4, 3)
    dense = layer.dense_weight().detach()[:, :, 0, 0]
    for l, combo in enumerate(itertools.combinations(range(4), 3)):
        connected = {j for j in range(4) if dense[l, 2 * j : 2 * j + 2].abs().sum() > 0}
        assert connected == set(combo)


@pytest.mark.parametrize(
    "args,message",
    [
        ((8, 8, 3, 4, 3, 5), "REAF 4-3-5: G_O must be C(4, 3) = 4"),
        ((8, 8, 3, 4, 5), "G_M=5 must not exceed G_I=4"),
        ((9, 8, 3, 4, 3), "in_channels=9 is not divisible by G_I=4"),
        ((8, 6, 3, 4, 3), "out_channels=6 is not divisible by G_O=4"),
        ((8, 8, 3, 0, 1), "G_I must be a positive integer"),
        ((8, 8, 3, 4, -1), "G_M must be a positive integer"),
    ],
)
def test_invalid_settings_raise(args, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        REAFConv2d(*args)


def test_invalid_impl_and_strings() -> None:
    with pytest.raises(ValueError, match="impl='fast' is not one of"):
        REAFConv2d(8, 8, 3, 4, 3, impl="fast")
    with pytest.raises(ValueError, match="not of the form"):
        parse_reaf("4x3x4")
    assert str(parse_reaf("4-3")) == "4-3-4"
    assert tuple(parse_reaf((8, 4, 70))) == (8, 4, 70)


def test_auto_times_strategies_once_per_signature() -> None:
    cache = autotune_cache()
    cache.clear()
    layer = REAFConv2d(64, 64, 3, 4, 3)
    twin = REAFConv2d(64, 64, 3, 4, 3)
    x = torch.randn(2, 64, 24, 24)  # 2 * 64 * 576 * 48 * 9 = 31.9 M MACs: worth timing
    before = layer.weight.detach().clone()
    y = layer(x)
    assert len(cache) == 1 and next(iter(cache.values())) in IMPLS
    twin(x)  # same signature: served from the cache
    layer(x[:1])  # new input shape: tuned again
    assert len(cache) == 2
    assert layer.weight.grad is None and torch.equal(layer.weight, before)  # timing used copies
    forced = REAFConv2d(64, 64, 3, 4, 3, impl=layer.resolved_impl(x))
    forced.load_state_dict(layer.state_dict())
    torch.testing.assert_close(y, forced(x))


def test_auto_does_not_time_tiny_calls() -> None:
    cache = autotune_cache()
    cache.clear()
    layer = REAFConv2d(16, 16, 3, 4, 3)
    x = torch.randn(2, 16, 6, 6)
    assert layer._useful_macs(x) == 2 * 16 * 36 * 12 * 9  # by hand: N * C_out * HW * M * k^2
    assert layer.resolved_impl(x) == resolve_auto_impl(layer.spec, "cpu") and not cache


def test_auto_fallback_rule_when_timing_is_not_allowed() -> None:
    """Deterministic mode (and compile/meta) never time: a fixed rule decides."""
    assert resolve_auto_impl(parse_reaf("4-4-1"), "cpu") == "masked"  # dense: nothing to save
    assert resolve_auto_impl(parse_reaf("4-3-4"), "cpu") == "decompose"
    assert resolve_auto_impl(parse_reaf("8-1-8"), "cpu") == "decompose"
    assert resolve_auto_impl(parse_reaf("4-3-4"), "cuda") == "masked"
    assert resolve_auto_impl(parse_reaf("8-1-8"), "cuda") == "decompose"
    layer = REAFConv2d(16, 16, 3, 8, 1)
    torch.use_deterministic_algorithms(True)
    try:
        assert layer.resolved_impl(torch.randn(1, 16, 4, 4)) == "decompose"
    finally:
        torch.use_deterministic_algorithms(False)


def test_channels_last_equals_contiguous() -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 16, 8, 8)
    for impl in IMPLS:
        layer = REAFConv2d(16, 70, 3, 8, 4, impl=impl)
        torch.testing.assert_close(
            layer(x.contiguous(memory_format=torch.channels_last)), layer(x), rtol=1e-4, atol=1e-5
        )


# --- REAF+ -------------------------------------------------------------------------------------


class _LoopREAFPlus(nn.Module):
    """The literal definition: g_O independent (BN_l, act, conv_l), outputs concatenated."""

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
    """(g_O - 1) * 2 * C_in more parameters than one BN + dense conv (SPEC §2)."""
    layer = REAFPlusConv2d(32, 64, 1, groups_out=2)
    plain = 2 * 32 + 64 * 32
    assert sum(p.numel() for p in layer.parameters()) - plain == (2 - 1) * 2 * 32
    with pytest.raises(ValueError, match="out_channels=63 is not divisible by g_O"):
        REAFPlusConv2d(32, 63, 1, groups_out=2)


@pytest.mark.parametrize("impl", ["masked", "gather", "decompose", "decompose_loop"])
@pytest.mark.parametrize("c_in,c_out,g_i,g_m", [(6, 6, 3, 2), (8, 12, 4, 2)])
def test_recomputing_backward_passes_gradcheck(impl: str, c_in, c_out, g_i, g_m) -> None:
    """The memory-lean autograd functions have exact (float64 finite-difference) gradients."""
    torch.manual_seed(5)
    layer = REAFConv2d(c_in, c_out, 3, g_i, g_m, stride=2, bias=True, impl=impl).double()
    x = torch.randn(2, c_in, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda inp, w, b: layer._run(impl, inp, w, b), (x, layer.weight, layer.bias)
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_autocast_bf16_matches_fp32(impl: str) -> None:
    """Under autocast the conv runs in bf16 and gradients come back in the parameters' fp32."""
    torch.manual_seed(6)
    layer = REAFConv2d(16, 12, 3, 4, 2, bias=True, impl=impl)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    reference = (
        _loop_reference(x.detach(), layer.weight.detach(), 4, 2, 1, 1)
        + layer.bias.detach()[None, :, None, None]
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference, rtol=3e-2, atol=3e-2)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32
    assert layer.bias.grad.dtype == torch.float32
    torch.testing.assert_close(layer.bias.grad, torch.full((12,), 72.0))  # 2 images x 6 x 6
