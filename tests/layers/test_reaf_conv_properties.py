"""Property tests: ``REAFConv2d`` is a dense ``nn.Conv2d`` with the REAF mask, for any geometry.

The reference is ``helpers.reaf_reference`` (the paper's Eq. 5-6 written as a mask
over a dense weight, independently of the package's plans and strategies), run by
``F.conv2d`` in float64; hypothesis draws ``G_I``/``G_M``, channels, kernel,
stride, padding, dilation, batch and image sizes, bias and the strategy.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.reaf_reference import dense_weight
from hypothesis import given, settings
from hypothesis import strategies as st

from reaf_lightning.layers import STRATEGIES, REAFConv2d

TOL = {"rtol": 1e-9, "atol": 1e-9}

# Tiny convolutions: one intra-op thread is several times faster on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@st.composite
def reaf_layers(draw):
    """A layer's arguments and an input size its output is at least 1x1 for."""
    g_i = draw(st.integers(1, 5))
    g_m = draw(st.integers(1, g_i))
    g_o = math.comb(g_i, g_m)
    kernel = draw(st.integers(1, 4))
    dilation = draw(st.integers(1, 2))
    padding = draw(st.integers(0, 2))
    span = dilation * (kernel - 1) + 1 - 2 * padding  # smallest input with one output
    return {
        "in_channels": g_i * draw(st.integers(1, 3)),
        "out_channels": g_o * draw(st.integers(1, 2)),
        "kernel_size": kernel,
        "g_i": g_i,
        "g_m": g_m,
        "stride": draw(st.integers(1, 3)),
        "padding": padding,
        "dilation": dilation,
        "bias": draw(st.booleans()),
        "impl": draw(st.sampled_from(tuple(STRATEGIES))),
    }, (
        draw(st.integers(1, 3)),
        draw(st.integers(max(span, 1), max(span, 1) + 5)),
        draw(st.integers(max(span, 1), max(span, 1) + 5)),
    )


@settings(max_examples=40)
@given(reaf_layers(), st.integers(0, 2**16))
def test_reaf_conv_is_a_masked_dense_conv(arguments, seed) -> None:
    """Forward and every gradient equal the masked dense convolution's."""
    args, (batch, height, width) = arguments
    torch.manual_seed(seed)
    layer = REAFConv2d(**args).double()
    x = torch.randn(batch, args["in_channels"], height, width, dtype=torch.float64)
    x.requires_grad_(True)
    y = layer(x)

    x_ref = x.detach().clone().requires_grad_(True)
    weight = layer.weight.detach().clone().requires_grad_(True)
    bias = None if layer.bias is None else layer.bias.detach().clone().requires_grad_(True)
    dense = dense_weight(weight, args["in_channels"], args["g_i"], args["g_m"])
    geometry = (args["stride"], args["padding"], args["dilation"])
    reference = F.conv2d(x_ref, dense, bias, *geometry)
    torch.testing.assert_close(y, reference, **TOL)

    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *layer.parameters()], grad)
    expected = torch.autograd.grad(
        reference, [x_ref, weight, *([bias] if bias is not None else [])], grad
    )
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, **TOL)


@settings(max_examples=30)
@given(reaf_layers())
def test_reaf_conv_output_size_is_nn_conv2ds(arguments) -> None:
    """The layer's output size formula is ``nn.Conv2d``'s for the same geometry."""
    args, (_, height, width) = arguments
    layer = REAFConv2d(**args)
    conv = torch.nn.Conv2d(
        args["in_channels"], args["out_channels"], args["kernel_size"], args["stride"],
        args["padding"], args["dilation"], device="meta",
    )  # fmt: skip
    expected = conv(torch.empty(1, args["in_channels"], height, width, device="meta")).shape
    assert layer.output_size(height, width) == tuple(expected[2:])
