"""REAF layers against independent references: nn.Conv2d, hand calculations, loops.

Three parts, one per module: the definition (``reaf_conv2d``, Eq. 5-6), the execution
strategies (each equals the definition, forward and gradients), and the autotuner.
Then what the layer refuses, and REAF+.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from reaf_lightning.layers import (
    REAFConv2d,
    REAFPlusConv2d,
    autotune,
    autotune_cache,
    parse_reaf,
    reaf_conv2d,
    resolve_auto_impl,
)
from reaf_lightning.layers.autotune import candidates, useful_macs

IMPLS = ("masked", "gather", "decompose", "decompose_loop", "loop")
TOL = {"rtol": 1e-4, "atol": 1e-4}

# --- the definition, Eq. 5-6 ---------------------------------------------------------------


def test_definition_by_hand() -> None:
    """3-2-3 with one channel per group, 1x1 kernel: every output is a hand-written sum."""
    x = torch.tensor([2.0, 3.0, 5.0]).reshape(1, 3, 1, 1)
    w = torch.tensor([[1.0, 10.0], [100.0, 1000.0], [-1.0, 0.5]]).reshape(3, 2, 1, 1)
    y = reaf_conv2d(x, w, torch.tensor([0.0, 0.0, 7.0]), parse_reaf("3-2-3")).flatten()
    # E_0 = (0, 1), E_1 = (0, 2), E_2 = (1, 2)
    assert y.tolist() == [1 * 2 + 10 * 3, 100 * 2 + 1000 * 5, -1 * 3 + 0.5 * 5 + 7]


@pytest.mark.parametrize("g,stride,k", [(2, 1, 3), (4, 2, 3), (3, 2, 1)])
def test_definition_gm1_is_grouped_conv(g: int, stride: int, k: int) -> None:
    """G_M = 1, G_I = G_O = g is exactly nn.Conv2d(groups=g) (paper §V, group convolution)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4 * g, 2 * g, k, stride, (k - 1) // 2, groups=g, bias=True)
    x = torch.randn(3, 4 * g, 9, 9)
    spec = parse_reaf((g, 1))
    y = reaf_conv2d(x, conv.weight, conv.bias, spec, stride, (k - 1) // 2)
    torch.testing.assert_close(y, conv(x), **TOL)


def test_definition_111_is_dense_conv() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 5, 3, 2, 1, dilation=1, bias=True)
    x = torch.randn(2, 6, 8, 8)
    torch.testing.assert_close(
        reaf_conv2d(x, conv.weight, conv.bias, parse_reaf("1-1-1"), 2, 1), conv(x)
    )


def test_dense_weight_zero_pattern() -> None:
    """Output group l connects to exactly the input groups of combination l."""
    layer = REAFConv2d(8, 4, 1, 4, 3)
    dense = layer.dense_weight().detach()[:, :, 0, 0]
    for l, combo in enumerate(itertools.combinations(range(4), 3)):
        connected = {j for j in range(4) if dense[l, 2 * j : 2 * j + 2].abs().sum() > 0}
        assert connected == set(combo)


def test_parameter_count_is_compact() -> None:
    layer = REAFConv2d(88, 70, 3, 8, 4)
    assert layer.weight.numel() == 70 * 4 * (88 // 8) * 9
    assert sum(p.numel() for p in layer.parameters()) == layer.weight.numel()


# --- strategies: each equals the definition ---------------------------------------------------

CONFIGS = [
    # (C_in, C_out, k, G_I, G_M, stride); the comments say why the shape is here
    (8, 8, 3, 4, 3, 1),  # 4-3-4: partials already in (G_M, C_out) order
    (12, 12, 3, 4, 2, 2),  # 4-2-6, strided: partials need gathers
    pytest.param(16, 70, 3, 8, 4, 1, marks=pytest.mark.slow),  # 8-4-70, B_out = 1: 70 convs
    (16, 70, 1, 8, 4, 2),  # 8-4-70, 1x1, strided
    (16, 16, 3, 8, 1, 2),  # 8-1-8: a grouped conv
    (6, 5, 3, 1, 1, 1),  # 1-1-1: dense
]


def _reference_and_grads(layer: REAFConv2d, x: torch.Tensor, weight, bias):
    """Eq. 5-6 with plain autograd, in float64 from the same numbers: an independent oracle."""
    x64 = x.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    b64 = None if bias is None else bias.detach().double().requires_grad_(True)
    y = reaf_conv2d(x64, w64, b64, layer.spec, layer.stride, layer.padding, layer.dilation)
    grad_out = torch.randn_like(y)
    leaves = (x64, w64) if b64 is None else (x64, w64, b64)
    return y, grad_out, torch.autograd.grad(y, leaves, grad_out)


@pytest.mark.parametrize("c_in,c_out,k,g_i,g_m,stride", CONFIGS)
def test_strategies_equal_definition(c_in, c_out, k, g_i, g_m, stride) -> None:
    """Forward, input gradient, weight and bias gradients; also the no-grad (compile) path."""
    torch.manual_seed(2)
    layer = REAFConv2d(c_in, c_out, k, g_i, g_m, stride=stride, bias=True)
    x = torch.randn(2, c_in, 6, 6)
    ref, grad_out, ref_grads = _reference_and_grads(layer, x, layer.weight, layer.bias)
    for impl in IMPLS:
        xi = x.clone().requires_grad_(True)
        y = layer.compute(impl, xi, layer.weight, layer.bias)
        torch.testing.assert_close(y, ref.float(), **TOL, msg=f"impl={impl}")
        grads = torch.autograd.grad(y, (xi, layer.weight, layer.bias), grad_out.float())
        for got, want, name in zip(grads, ref_grads, ("x", "weight", "bias")):
            torch.testing.assert_close(got, want.float(), **TOL, msg=f"impl={impl} grad {name}")
        with torch.no_grad():
            y = layer.compute(impl, x, layer.weight, layer.bias)
            torch.testing.assert_close(y, ref.float(), **TOL, msg=f"impl={impl} no_grad")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("impl", IMPLS)
def test_strategies_in_other_dtypes(impl: str, dtype: torch.dtype) -> None:
    """A layer converted with ``.to(dtype)`` computes in that dtype, every strategy alike."""
    torch.manual_seed(3)
    layer = REAFConv2d(16, 12, 3, 4, 2, bias=True, impl=impl).to(dtype)
    x = torch.randn(2, 16, 6, 6, dtype=dtype, requires_grad=True)
    ref, grad_out, (ref_gx, ref_gw, _) = _reference_and_grads(layer, x, layer.weight, layer.bias)
    y = layer(x)
    assert y.dtype == dtype
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float64 else {"rtol": 2e-2, "atol": 5e-2}
    torch.testing.assert_close(y.double(), ref, **tol)
    y.backward(grad_out.to(dtype))
    assert x.grad.dtype == dtype and layer.weight.grad.dtype == dtype
    scale = {"rtol": tol["rtol"], "atol": tol["atol"] * ref_gw.abs().max().item()}
    torch.testing.assert_close(x.grad.double(), ref_gx, **tol)
    torch.testing.assert_close(layer.weight.grad.double(), ref_gw, **scale)


@pytest.mark.parametrize("impl", IMPLS)
def test_autocast_bf16_matches_fp32(impl: str) -> None:
    """Under autocast the conv runs in bf16 and gradients come back in the parameters' fp32."""
    torch.manual_seed(6)
    layer = REAFConv2d(16, 12, 3, 4, 2, bias=True, impl=impl)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    reference = reaf_conv2d(
        x.detach(), layer.weight.detach(), layer.bias.detach(), layer.spec, 1, 1
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference, rtol=3e-2, atol=3e-2)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32
    assert layer.bias.grad.dtype == torch.float32
    torch.testing.assert_close(layer.bias.grad, torch.full((12,), 72.0))  # 2 images x 6 x 6


@pytest.mark.parametrize("impl", IMPLS)
def test_channels_last_equals_contiguous(impl: str) -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 16, 8, 8)
    layer = REAFConv2d(16, 70, 3, 8, 4, impl=impl)
    y = layer(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y, layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_unbatched_input_as_nn_conv2d(impl: str) -> None:
    """(C, H, W) in, (C_out, H', W') out, the same numbers as the batch of one."""
    torch.manual_seed(4)
    layer = REAFConv2d(8, 8, 3, 4, 3, stride=2, impl=impl)
    x = torch.randn(8, 7, 7)
    y = layer(x)
    assert y.shape == nn.Conv2d(8, 8, 3, 2, 1)(x).shape
    torch.testing.assert_close(y, layer(x[None])[0])


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["masked", "gather", "decompose", "decompose_loop"])
@pytest.mark.parametrize("c_in,c_out,g_i,g_m", [(6, 6, 3, 2), (8, 12, 4, 2), (8, 8, 4, 3)])
def test_memory_lean_backward_passes_gradcheck(impl: str, c_in, c_out, g_i, g_m) -> None:
    """The memory-lean autograd functions have exact (float64 finite-difference) gradients."""
    torch.manual_seed(5)
    layer = REAFConv2d(c_in, c_out, 3, g_i, g_m, stride=2, bias=True, impl=impl).double()
    x = torch.randn(2, c_in, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda inp, w, b: layer.compute(impl, inp, w, b), (x, layer.weight, layer.bias)
    )


# --- autotune ------------------------------------------------------------------------------------


def test_auto_times_strategies_once_per_signature(monkeypatch) -> None:
    monkeypatch.setattr(autotune, "AUTOTUNE_MIN_MACS", 0)  # time even this small layer
    cache = autotune_cache()
    cache.clear()
    layer = REAFConv2d(16, 16, 3, 4, 3)
    twin = REAFConv2d(16, 16, 3, 4, 3)
    x = torch.randn(2, 16, 8, 8)
    before = layer.weight.detach().clone()
    y = layer(x)
    assert len(cache) == 1 and next(iter(cache.values())) in candidates(layer.plan)
    twin(x)  # same signature: served from the cache
    layer(x[:1])  # new input shape: tuned again
    assert len(cache) == 2
    assert layer.weight.grad is None and torch.equal(layer.weight, before)  # timing used copies
    forced = REAFConv2d(16, 16, 3, 4, 3, impl=layer.resolved_impl(x))
    forced.load_state_dict(layer.state_dict())
    torch.testing.assert_close(y, forced(x))


def test_auto_candidates() -> None:
    """G_M = 1: gather and decompose_loop would repeat others' convs; dense: nothing to choose."""
    assert set(candidates(parse_reaf("4-3"))) == set(IMPLS)
    assert candidates(parse_reaf("8-1")) == ("masked", "decompose", "loop")
    assert candidates(parse_reaf("2-2")) == ("masked",)


def test_auto_does_not_time_tiny_calls() -> None:
    cache = autotune_cache()
    cache.clear()
    layer = REAFConv2d(16, 16, 3, 4, 3)
    x = torch.randn(2, 16, 6, 6)
    assert useful_macs(layer.plan, x) == 2 * 16 * 36 * 12 * 9  # by hand: N * C_out * HW * M * k^2
    assert layer.resolved_impl(x) == resolve_auto_impl(layer.spec, "cpu") and not cache


def test_auto_fallback_rule_when_timing_is_not_allowed() -> None:
    """Deterministic mode (and compile/meta) never time: a fixed rule decides."""
    assert resolve_auto_impl(parse_reaf("4-4-1"), "cpu") == "masked"  # dense: nothing to save
    assert resolve_auto_impl(parse_reaf("4-3-4"), "cpu") == "decompose"
    assert resolve_auto_impl(parse_reaf("8-1-8"), "cpu") == "decompose"
    assert resolve_auto_impl(parse_reaf("4-3-4"), "cuda") == "masked"
    assert resolve_auto_impl(parse_reaf("8-1-8"), "cuda") == "decompose"
    autotune_cache().clear()
    layer = REAFConv2d(64, 64, 3, 8, 1)
    torch.use_deterministic_algorithms(True)  # the conftest fixture restores the mode
    assert layer.resolved_impl(torch.randn(2, 64, 24, 24)) == "decompose"
    assert not autotune_cache()


# --- what the layer refuses --------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,kwargs,error,message",
    [
        ((8, 8, 3, 4, 3, 5), {}, ValueError, "REAF 4-3-5: G_O must be C(4, 3) = 4"),
        ((8, 8, 3, 4, 5), {}, ValueError, "G_M=5 must not exceed G_I=4"),
        ((9, 8, 3, 4, 3), {}, ValueError, "in_channels=9 is not divisible by G_I=4"),
        ((8, 6, 3, 4, 3), {}, ValueError, "out_channels=6 is not divisible by G_O=4"),
        ((8, 8, 3, 0, 1), {}, ValueError, "G_I must be a positive integer"),
        ((8, 8, 3, 4, -1), {}, ValueError, "G_M must be a positive integer"),
        ((8, 8, 0, 4, 3), {}, ValueError, "kernel_size must be a positive integer, got 0"),
        ((8, 8, 2.5, 4, 3), {}, TypeError, "kernel_size must be an int or a square (n, n) pair"),
        ((8, 8, (3, 3, 3), 4, 3), {}, TypeError, "kernel_size must be an int or a square"),
        ((8, 8, 3, 4, 3), {"stride": 0}, ValueError, "stride must be a positive integer, got 0"),
        ((8, 8, 3, 4, 3), {"stride": True}, TypeError, "stride must be an int"),
        ((8, 8, 3, 4, 3), {"padding": -1}, ValueError, "padding must be >= 0, got -1"),
        ((8, 8, 3, 4, 3), {"padding": 1.0}, TypeError, "padding must be an int"),
        ((8, 8, 3, 4, 3), {"dilation": 0}, ValueError, "dilation must be a positive integer"),
        ((0, 8, 3, 4, 3), {}, ValueError, "in_channels must be a positive integer, got 0"),
        ((8, 8, 3, 4, 3), {"impl": "fast"}, ValueError, "impl='fast' is not one of"),
    ],
)
def test_invalid_construction_raises(args, kwargs, error, message) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        REAFConv2d(*args, **kwargs)


def test_parse_reaf_strings() -> None:
    with pytest.raises(ValueError, match="not of the form"):
        parse_reaf("4x3x4")
    assert str(parse_reaf("4-3")) == "4-3-4"
    assert tuple(parse_reaf((8, 4, 70))) == (8, 4, 70)


@pytest.mark.parametrize("impl", IMPLS)
def test_invalid_inputs_raise_in_every_strategy(impl: str) -> None:
    """What nn.Conv2d refuses, refused in one line by every strategy (some used to compute)."""
    layer = REAFConv2d(8, 8, 3, 4, 3, impl=impl)
    cases = [
        (torch.randn(2, 9, 6, 6), ValueError, r"expects 8 input channels, got 9"),
        (torch.randn(2, 4, 6, 6), ValueError, r"expects 8 input channels, got 4"),
        (torch.ones(2, 8, 6, 6, dtype=torch.long), TypeError, r"dtype torch.int64 is not"),
        (torch.ones(2, 8, 6, 6, dtype=torch.bool), TypeError, r"dtype torch.bool is not"),
        (torch.randn(2, 8, 6, 6).double(), TypeError, r"float64 does not match .*float32"),
        (torch.randn(8, 6), ValueError, r"4-D \(N, C, H, W\) or 3-D unbatched"),
        (torch.randn(1, 2, 8, 6, 6), ValueError, r"got shape \(1, 2, 8, 6, 6\)"),
    ]
    for x, error, message in cases:
        with pytest.raises(error, match=message):
            layer(x)
    small = REAFConv2d(8, 8, 5, 4, 3, padding=0, impl=impl)
    with pytest.raises(ValueError, match=r"spatial size \(3, 3\) is smaller than its kernel"):
        small(torch.randn(1, 8, 3, 3))
    with pytest.raises(RuntimeError):  # the reference behaviour these mirror
        nn.Conv2d(8, 8, 5)(torch.randn(1, 8, 3, 3))


# --- REAF+ -------------------------------------------------------------------------------------


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


def test_gm1_weights_copy_to_grouped_conv() -> None:
    """The documented layout promise: a G_M = 1 REAF weight is nn.Conv2d(groups=g)'s weight."""
    torch.manual_seed(7)
    layer = REAFConv2d(12, 6, 3, 3, 1)
    conv = nn.Conv2d(12, 6, 3, 1, 1, groups=3, bias=False)
    conv.weight.data.copy_(layer.weight.data)
    x = torch.randn(2, 12, 5, 5)
    torch.testing.assert_close(layer(x), conv(x), **TOL)
    assert math.comb(3, 1) == layer.g_o
