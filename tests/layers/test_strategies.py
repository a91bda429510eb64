"""Every strategy of the table equals the definition (Eq. 5-6): forward and gradients.

The reference is ``reaf_conv2d`` with plain autograd in float64; every entry of
``STRATEGIES``, including one added later, is checked, and so is a strategy added the
documented way (one function, one table entry).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reaf_lightning.layers import STRATEGIES, REAFConv2d, Strategy, reaf_conv2d
from reaf_lightning.layers.strategies import scatter_dense

IMPLS = tuple(STRATEGIES)
TOL = {"rtol": 1e-4, "atol": 1e-4}

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


def _dense_copy(x, weight, bias, plan):
    """A new strategy, written as docs/layers.md shows: differentiable operators only."""
    return F.conv2d(x, scatter_dense(weight, plan).contiguous(), bias, *plan.conv_args)


def test_a_new_strategy_is_one_function_and_one_table_entry(monkeypatch) -> None:
    """Selected by name, checked against the definition, gradients by recomputation."""
    monkeypatch.setitem(STRATEGIES, "dense_copy", Strategy(_dense_copy))
    torch.manual_seed(8)
    layer = REAFConv2d(12, 12, 3, 4, 2, stride=2, bias=True, impl="dense_copy")
    x = torch.randn(2, 12, 7, 7, requires_grad=True)
    ref, grad_out, ref_grads = _reference_and_grads(layer, x, layer.weight, layer.bias)
    y = layer(x)
    torch.testing.assert_close(y, ref.float(), **TOL)
    grads = torch.autograd.grad(y, (x, layer.weight, layer.bias), grad_out.float())
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want.float(), **TOL)
