"""FlopCounterMode counts a REAF convolution at its true cost, whatever strategy or tuning runs.

Oracles: ``nn.Conv2d(groups=g)`` counted by the same ``FlopCounterMode`` (a ``g-1-g``
REAF conv is that convolution), and ``reaf_lightning.models.complexity`` (forward
hooks, no dispatch), which Lightning's model summary must agree with on every call.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.utilities.model_summary import ModelSummary
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from reaf_lightning.layers import STRATEGIES, REAFConv2d, autotune, autotune_cache
from reaf_lightning.models import create_model
from reaf_lightning.models.complexity import count_macs, layer_macs
from reaf_lightning.training.module import ImageClassifier

IMPLS = ("auto", *STRATEGIES)


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.fixture
def always_tune(monkeypatch):
    """Every auto call large enough to time, and nothing tuned yet: trials on first calls."""
    monkeypatch.setattr(autotune, "AUTOTUNE_MIN_MACS", 0)
    autotune_cache().clear()
    yield
    autotune_cache().clear()


@pytest.mark.parametrize("groups,reaf", [(1, "1-1-1"), (4, "4-1-4")])
@pytest.mark.parametrize("impl", IMPLS)
def test_counts_as_nn_conv2d_forward_and_backward(impl, groups, reaf, always_tune) -> None:
    conv = nn.Conv2d(16, 8, 3, 2, 1, groups=groups, bias=True)
    layer = REAFConv2d.from_conv(conv, reaf, impl=impl)
    x = torch.randn(2, 16, 9, 9, requires_grad=True)
    dense = nn.Conv2d(16, 8, 3, 2, 1, bias=True)
    # FlopCounterMode counts a dense conv's backward as one forward per gradient (input,
    # weight); a grouped conv's weight gradient it counts `groups` times (it ignores groups
    # there), so the backward is checked against the dense rule.
    assert _flops(lambda: dense(x).sum().backward()) == 3 * _flops(lambda: dense(x))
    for _ in range(2):  # the first auto call tunes
        forward = _flops(lambda: layer(x))
        assert forward == _flops(lambda: conv(x))
        assert _flops(lambda: layer(x).sum().backward()) == 3 * forward


@pytest.mark.parametrize("impl", IMPLS)
def test_reaf_conv_counts_its_compact_macs(impl, always_tune) -> None:
    """4-3-4: masked runs a dense conv with 4/3 the MACs; the count stays the compact one."""
    layer = REAFConv2d(24, 24, 3, 4, 3, impl=impl)
    x = torch.randn(2, 24, 10, 10)
    expected = 2 * layer_macs(layer, torch.empty(2, 24, 10, 10))
    assert expected == 2 * 2 * 24 * 100 * 18 * 9  # by hand: 2 * N * C_out * HW * G_M*A_in * k^2
    with torch.no_grad():
        assert [_flops(lambda: layer(x)) for _ in range(2)] == [expected, expected]


@pytest.mark.parametrize("impl", ["auto", "masked"])
def test_lightning_model_summary_counts_the_network_twice_in_a_row(impl, always_tune) -> None:
    model = ImageClassifier("test_reaf_resnet", {"impl": impl}, num_classes=10)
    model.example_input_array = torch.zeros(1, 3, 32, 32)
    expected = 2 * count_macs(create_model("test_reaf_resnet", num_classes=10), (3, 32, 32))
    assert [ModelSummary(model).total_flops for _ in range(2)] == [expected, expected]
    if impl == "auto":
        assert autotune_cache()  # the first summary did tune, and the trials were not counted
