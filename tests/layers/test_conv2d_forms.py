"""REAFConv2d takes nn.Conv2d's argument forms, converts from it and prints like it.

The oracle is ``nn.Conv2d`` itself: the same arguments give the same output shape
and the same text; where REAF has a conv's connectivity (``g-1-g`` from
``groups=g``, ``G_M = G_I`` from a dense conv) ``from_conv`` gives the same numbers.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reaf_lightning.layers import REAFConv2d, parse_reaf

FORMS = [
    # (kernel_size, stride, padding, dilation) in nn.Conv2d's forms
    (3, 1, 1, 1),
    ((3, 3), (2, 2), (1, 1), (1, 1)),
    (3, 1, "same", 1),
    (4, 1, "same", 1),  # even kernel: nn.Conv2d pads one more at the end
    (2, 1, "same", 3),  # odd span d * (k - 1) = 3
    ((5, 5), 1, "same", (2, 2)),
    (3, 2, "valid", 1),
    ((1, 1), (2, 2), 0, 1),
    (3, 1, (2, 2), 2),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # the oracle's
@pytest.mark.parametrize("kernel_size,stride,padding,dilation", FORMS)
def test_output_shape_and_text_as_nn_conv2d(kernel_size, stride, padding, dilation) -> None:
    conv = nn.Conv2d(8, 8, kernel_size, stride, padding, dilation, bias=False)
    layer = REAFConv2d(8, 8, kernel_size, 4, 3, stride=stride, padding=padding, dilation=dilation)
    for size in (9, 10):
        x = torch.randn(2, 8, size, size + 1)
        assert layer(x).shape == conv(x).shape
        assert layer.output_size(size, size + 1) == tuple(conv(x).shape[-2:])
    assert repr(layer) == repr(conv).replace("Conv2d(", "REAFConv2d(")[:-1] + ", reaf=4-3-4)"


def test_text_names_bias_and_forced_strategy() -> None:
    layer = REAFConv2d(64, 64, 3, 4, 3, padding=1, bias=True, impl="decompose")
    assert repr(layer) == (
        "REAFConv2d(64, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), reaf=4-3-4, "
        "impl=decompose)"
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"kernel_size": (3, 1)}, r"kernel_size=\(3, 1\) is not square"),
        ({"stride": (1, 2)}, r"stride=\(1, 2\) is not square"),
        ({"padding": (0, 1)}, r"padding=\(0, 1\) is not square"),
        ({"dilation": [1, 2]}, r"dilation=\(1, 2\) is not square"),
        ({"padding": "full"}, "padding='full' is not one of 'same', 'valid'"),
        ({"padding": "same", "stride": 2}, "padding='same' is not supported for strided"),
    ],
)
def test_refuses_what_it_cannot_represent(kwargs, message) -> None:
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        REAFConv2d(8, 8, g_i=4, g_m=3, **kwargs)


@pytest.mark.parametrize("groups,bias,stride,padding", [(4, True, 2, 1), (2, False, 1, "same")])
def test_from_grouped_conv_keeps_weights(groups, bias, stride, padding) -> None:
    """g-1-g is nn.Conv2d(groups=g): from_conv keeps the weights, so outputs are equal."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, stride, padding, groups=groups, bias=bias)
    layer = REAFConv2d.from_conv(conv, f"{groups}-1-{groups}")
    x = torch.randn(2, 8, 7, 7)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-4, atol=1e-5)
    assert str(layer.spec) == f"{groups}-1-{groups}" and (layer.bias is not None) == bias


@pytest.mark.parametrize("reaf", ["1-1-1", "3-3-1"])
def test_from_dense_conv_with_full_merge_keeps_weights(reaf) -> None:
    """G_M = G_I reads every input for every output: the dense conv, weights kept."""
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 5, (3, 3), (1, 1), (2, 2), dilation=(2, 2), bias=True).double()
    layer = REAFConv2d.from_conv(conv, reaf)
    assert layer.weight.dtype == torch.float64
    x = torch.randn(1, 6, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x))


def test_from_conv_with_new_connectivity_is_initialised_afresh() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
    layer = REAFConv2d.from_conv(conv, parse_reaf("4-3"))
    assert repr(layer) == (
        "REAFConv2d(64, 64, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False, "
        "reaf=4-3-4)"
    )
    assert layer.weight.shape == (64, 48, 3, 3)
    # Kaiming-normal fan-out (reset_parameters): std sqrt(2 / (C_out * k * k))
    expected_std = (2 / (64 * 9)) ** 0.5
    assert abs(layer.weight.std().item() / expected_std - 1) < 0.05


@pytest.mark.parametrize(
    "conv,reaf,error,message",
    [
        (nn.Conv2d(8, 8, 3, groups=4), "4-3-4", ValueError, "groups=4; REAF 4-3-4 would replace"),
        (nn.Conv2d(8, 8, 3, groups=2), "4-1-4", ValueError, "only 2-1-2"),
        (nn.Conv2d(8, 8, 3, padding_mode="reflect"), "4-3", ValueError, "zeros only"),
        (nn.Conv2d(8, 8, (3, 1)), "4-3", ValueError, r"kernel_size=\(3, 1\) is not square"),
        (nn.Conv2d(6, 8, 3), "4-3", ValueError, "in_channels=6 is not divisible by G_I=4"),
        (nn.Linear(8, 8), "4-3", TypeError, "needs an nn.Conv2d, got Linear"),
    ],
)
def test_from_conv_refusals(conv, reaf, error, message) -> None:
    with pytest.raises(error, match=message):
        REAFConv2d.from_conv(conv, reaf)


@pytest.mark.parametrize("impl", ["auto", "masked", "decompose"])
def test_meta_device_gives_nn_conv2d_shapes(impl) -> None:
    """Networks are counted on the meta device: no data, the same shapes as nn.Conv2d."""
    with torch.device("meta"):
        layer = REAFConv2d(8, 12, 3, 4, 2, stride=2, padding=1, impl=impl)
        conv = nn.Conv2d(8, 12, 3, 2, 1)
        x = torch.empty(2, 8, 9, 9)
        assert layer(x).shape == conv(x).shape and layer(x).device.type == "meta"
