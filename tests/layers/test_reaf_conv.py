"""The definition (Eq. 5-6) against hand calculations and nn.Conv2d, and what the layer refuses.

Each strategy is checked against this definition in ``test_strategies.py``.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from reaf_lightning.layers import REAFConv2d, parse_reaf, reaf_conv2d

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


def test_gm1_weights_copy_to_grouped_conv() -> None:
    """The documented layout promise: a G_M = 1 REAF weight is nn.Conv2d(groups=g)'s weight."""
    torch.manual_seed(7)
    layer = REAFConv2d(12, 6, 3, 3, 1)
    conv = nn.Conv2d(12, 6, 3, 1, 1, groups=3, bias=False)
    conv.weight.data.copy_(layer.weight.data)
    x = torch.randn(2, 12, 5, 5)
    torch.testing.assert_close(layer(x), conv(x), **TOL)


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
        ((8, 8, 3, 4), {}, ValueError, "G_M must be a positive integer, got None"),
        (
            (8, 8, 3, parse_reaf("4-3"), 3),
            {},
            ValueError,
            "G_I must be a positive integer, got REAFSpec('4-3-4')",
        ),
        ((8, 8, 3, "4x3"), {}, ValueError, "'4x3' is not of the form 'G_I-G_M-G_O'"),
    ],
)
def test_invalid_construction_raises(args, kwargs, error, message) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        REAFConv2d(*args, **kwargs)


def test_the_reaf_setting_is_taken_whole_as_given() -> None:
    """``REAFConv2d(in, out, k, spec)`` is ``REAFConv2d(in, out, k, g_i, g_m)``, and keeps the
    very spec it was given (it is parsed where it enters, never unpacked and rebuilt)."""
    spec = parse_reaf("4-3-4")
    torch.manual_seed(3)
    by_ints = REAFConv2d(8, 8, 3, 4, 3, stride=2)
    torch.manual_seed(3)
    by_spec = REAFConv2d(8, 8, 3, spec, stride=2)
    assert by_spec.spec is spec and repr(by_spec) == repr(by_ints)
    x = torch.randn(2, 8, 7, 7)
    torch.testing.assert_close(by_spec(x), by_ints(x), rtol=0, atol=0)
    assert REAFConv2d(8, 8, 3, "4-3").spec == spec
    assert REAFConv2d.from_conv(nn.Conv2d(8, 8, 3), spec).spec is spec


def test_one_check_of_a_strategy_name_wherever_it_enters(monkeypatch) -> None:
    """A layer, ``create_model`` (a plain network too) and ``convert`` accept an added strategy
    and refuse an unknown one with the same line."""
    from reaf_lightning import convert
    from reaf_lightning.layers import STRATEGIES
    from reaf_lightning.models import create_model

    monkeypatch.setitem(STRATEGIES, "added", STRATEGIES["masked"])
    assert REAFConv2d(8, 8, 3, 4, 3, impl="added").impl == "added"
    create_model("test_resnet", impl="added")
    net = create_model("test_reaf_resnet", impl="added")
    assert {m.impl for m in net.modules() if isinstance(m, REAFConv2d)} == {"added"}
    size = (8, 8, 8)
    new, _ = convert(nn.Sequential(nn.Conv2d(8, 8, 3)), match=None, input_size=size, impl="added")
    assert new[0].impl == "added"
    entries = [
        lambda impl: REAFConv2d(8, 8, 3, 4, 3, impl=impl),
        lambda impl: create_model("test_resnet", impl=impl),
        lambda impl: create_model("test_reaf_resnet", impl=impl),
        lambda impl: convert(nn.Sequential(nn.Conv2d(8, 8, 3)), input_size=size, impl=impl),
    ]
    messages = set()
    for build in entries:
        with pytest.raises(ValueError) as refused:
            build("fast")
        messages.add(str(refused.value))
    (message,) = messages
    assert message.startswith("REAF impl='fast' is not one of auto, ") and "added" in message


def test_parse_reaf_strings() -> None:
    with pytest.raises(ValueError, match="not of the form"):
        parse_reaf("4x3x4")
    assert str(parse_reaf("4-3")) == "4-3-4"
    assert tuple(parse_reaf((8, 4, 70))) == (8, 4, 70)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_tracers_record_plain_convolutions() -> None:
    """torch.jit.trace (the TorchScript ONNX exporter) and torch.export see aten convolutions,
    not this package's library operators, and compute the layer's numbers."""
    torch.manual_seed(9)
    layer = REAFConv2d(8, 8, 3, 4, 3, stride=2).eval()
    x = torch.randn(1, 8, 7, 7)
    traced = torch.jit.trace(layer, x)
    assert "aten::_convolution" in str(traced.graph)
    assert "reaf_lightning::" not in str(traced.graph)
    torch.testing.assert_close(traced(x), layer(x))
    exported = torch.export.export(layer, (x,))
    assert "reaf_lightning" not in str(exported.graph) and "conv2d" in str(exported.graph)
    torch.testing.assert_close(exported.module()(x), layer(x))
