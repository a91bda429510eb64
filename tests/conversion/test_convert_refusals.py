"""``convert`` under adversarial use: what is shared stays shared, every refusal is one line.

A module under two names is converted once and shared again; a parameter held by
two modules, or read by the forward itself, keeps its modules as they are; every
bad setting, a wrong ``input_size`` and a non-module are refused with one line that
names the value, and nothing is printed (torch.fx's tracebacks included).
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import reaf_lightning
from reaf_lightning.layers import REAFConv2d


class Shared(nn.Module):
    """``b`` is ``a`` (one module, two names), called twice; ``c`` holds ``d``'s weight."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = self.a
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.d = nn.Conv2d(8, 8, 3, padding=1)
        self.d.weight = self.c.weight
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.b(F.relu(self.a(self.stem(x)))))
        x = F.relu(self.d(F.relu(self.c(x))))
        return self.fc(x.mean((2, 3)))


class ReadsAWeight(nn.Module):
    """The forward reads ``a.weight`` itself, in a second, functional convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.a(self.stem(x))
        return self.c(F.conv2d(x, self.a.weight, padding=1)).mean((2, 3))


@pytest.mark.parametrize("match", [None, "flops", "params"])
def test_a_module_under_two_names_is_converted_once_and_stays_shared(match) -> None:
    torch.manual_seed(0)
    net = Shared()
    new, report = reaf_lightning.convert(net, "4-3-4", match=match, input_size=(3, 8, 8))
    assert isinstance(new.a, REAFConv2d) and new.b is new.a
    assert "b" in report.converted["a"] and "b" not in report.converted  # one layer, both names
    assert "a" in str(report) and "the same module as b" in str(report)
    # c and d hold one weight: both left as they are, still sharing it, each naming the other.
    assert type(new.c) is nn.Conv2d and new.c.weight is new.d.weight
    assert new.c.weight.shape == net.c.weight.shape
    assert "shares a parameter with d" in report.skipped["c"]
    assert "shares a parameter with c" in report.skipped["d"]
    x = torch.randn(2, 3, 8, 8)
    assert new(x).shape == net(x).shape
    assert net.b is net.a and type(net.a) is nn.Conv2d  # the input is untouched


def test_a_shared_block_is_one_block_after_conversion() -> None:
    block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), block, block, nn.Conv2d(8, 4, 1))
    new, report = reaf_lightning.convert(net, "2-1-2", input_size=(3, 6, 6))
    assert new[1] is new[2] and isinstance(new[1][0], REAFConv2d)
    assert list(report.converted) == ["1.0"] and "2.0" in report.converted["1.0"]
    assert new[1][0].out_channels == new[1][1].num_features == new[3].in_channels


@pytest.mark.parametrize("match", [None, "flops"])
def test_a_weight_the_forward_reads_itself_is_left_alone(match) -> None:
    new, report = reaf_lightning.convert(ReadsAWeight(), "4-3-4", match, input_size=(3, 8, 8))
    assert type(new.a) is nn.Conv2d and new.a.weight.shape == (8, 8, 3, 3)
    assert "a.weight is read directly by the forward" in report.skipped["a"]
    assert isinstance(new.c, REAFConv2d)
    assert new(torch.randn(1, 3, 8, 8)).shape == (1, 8)


def test_include_and_exclude_take_one_pattern_as_a_string() -> None:
    with torch.device("meta"):
        net = torchvision.models.resnet18()
    one = reaf_lightning.convert(net, match=None, include="layer3.*", exclude="*.0.*")[1]
    listed = reaf_lightning.convert(net, match=None, include=["layer3.*"], exclude=["*.0.*"])[1]
    assert one.converted == listed.converted and sorted(one.converted) == [
        "layer3.1.conv1",
        "layer3.1.conv2",
    ]


@pytest.mark.parametrize(
    ("option", "patterns", "typo"),
    [("include", "layr3.*", "layr3.*"), ("exclude", ["*.downsample.*", "fc1"], "fc1")],
)
def test_a_pattern_matching_no_module_is_refused_naming_it(option, patterns, typo) -> None:
    with torch.device("meta"):
        net = torchvision.models.resnet18()
    with pytest.raises(ValueError) as refused:
        reaf_lightning.convert(net, match=None, **{option: patterns})
    message = str(refused.value)
    assert f"{option} pattern {typo!r} matches no module of ResNet" in message
    assert "conv1, bn1, relu, maxpool, layer1, ..." in message and "\n" not in message


class NoPadding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5)
        self.head = nn.Conv2d(8, 8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x))


@pytest.mark.parametrize(
    "model, settings, error, message",
    [
        ("resnet18", {}, TypeError, "model must be a torch.nn.Module (a CNN), got str"),
        (nn.ReLU(), {}, ValueError, "ReLU has no parameters, so no convolution to convert"),
        (
            None,
            {"input_size": (4, 9, 9)},
            ValueError,
            "cannot run one image of input_size=(4, 9, 9)",
        ),
        (None, {"input_size": (3, 5, 5)}, ValueError, "input_size=(3, 5, 5) (RuntimeError: "),
        (
            None,
            {"input_size": (3, 0, 9)},
            ValueError,
            "input_size=(3, 0, 9) must be three positive",
        ),
        (None, {"input_size": (3, 9)}, ValueError, "input_size=(3, 9) must be three positive"),
        (None, {"input_size": (3.0, 9, 9)}, ValueError, "input_size=(3.0, 9, 9) must be three"),
        (None, {"input_size": "3x9x9"}, ValueError, "input_size='3x9x9' must be three"),
        (None, {"input_size": (True, 9, 9)}, ValueError, "input_size=(True, 9, 9) must be"),
        (None, {"tolerance": -1}, ValueError, "tolerance=-1 must be a finite number >= 0"),
        (None, {"tolerance": float("nan")}, ValueError, "tolerance=nan must be a finite number"),
        (None, {"tolerance": float("inf")}, ValueError, "tolerance=inf must be a finite number"),
        (None, {"tolerance": "0.1"}, ValueError, "tolerance='0.1' must be a finite number"),
        (None, {"include": ["layer*", 3]}, TypeError, "include=['layer*', 3] must be a glob"),
        (None, {"exclude": None}, TypeError, "exclude=None must be a glob pattern"),
        (None, {"pointwise": "false"}, TypeError, "pointwise='false' must be True or False"),
        (None, {"grouped": 1}, TypeError, "grouped=1 must be True or False"),
        (None, {"match": "area"}, ValueError, "match='area' must be 'flops', 'params' or None"),
        (None, {"impl": "fast"}, ValueError, "impl='fast' is not one of auto, "),
        (None, {"reaf": "4-3-5"}, ValueError, "G_O must be C(4, 3) = 4"),
    ],
)
def test_every_refusal_is_one_line_naming_the_value(model, settings, error, message, capfd):
    model = NoPadding() if model is None else model
    with pytest.raises(error, match=re.escape(message)) as raised:
        reaf_lightning.convert(model, **settings)
    assert "\n" not in str(raised.value)
    assert raised.value.__cause__ is None  # the CLI shows the innermost cause: it is this one
    assert capfd.readouterr() == ("", "")  # nothing printed: no traceback of torch.fx's


def test_a_forward_that_reads_values_is_counted_for_real_and_named_when_traced() -> None:
    """x.item() traces but cannot run on the meta device: the original is counted by running it
    once for real; matching the cost, which needs the traced graph's shapes, is refused."""

    class Thresholded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, padding=1)

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x) + x.abs().max().item() * 0

    _, report = reaf_lightning.convert(Thresholded(), "4-3-4", match=None, input_size=(4, 6, 6))
    assert list(report.converted) == ["conv"] and report.macs == (8 * 4 * 9 * 36, 8 * 3 * 9 * 36)
    pattern = r"^convert: cannot trace Thresholded: .* on the meta device at node item .*match=None"
    with pytest.raises(ValueError, match=pattern):
        reaf_lightning.convert(Thresholded(), "4-3-4", input_size=(4, 6, 6))
