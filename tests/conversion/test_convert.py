"""``reaf_lightning.convert``: REAF in any CNN, its cost counted independently of the package.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the REAF
layers' ``loop`` strategy (the paper's Eq. 5-6, one convolution per output
group), so the count is of the operations actually run, not of the package's
own formula (``reaf_lightning.models.complexity``) that ``convert`` uses.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import reaf_lightning
from reaf_lightning.conversion.sources import build_network
from reaf_lightning.layers import REAFConv2d
from reaf_lightning.models import create_model
from reaf_lightning.models.complexity import count_macs, count_parameters


def _flops(model: nn.Module, size: tuple[int, int, int]) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.randn(2, *size))
    return counter.get_total_flops()


class BranchyNet(nn.Module):
    """Residual additions, a concatenation, a channel-attention product and a flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.a = nn.Conv2d(32, 48, 3, padding="same")
        self.b = nn.Conv2d(48, 32, (3, 3), padding=(1, 1), bias=False)
        self.left = nn.Conv2d(32, 24, 3, stride=2, padding=1)
        self.right = nn.Conv2d(32, 40, 5, stride=2, padding=2)
        self.squeeze = nn.Conv2d(64, 16, 1)
        self.excite = nn.Conv2d(16, 64, 1)
        self.head = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.fc = nn.Linear(64 * 4 * 4, 7)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = x + self.b(F.relu(self.a(x)))
        y = torch.cat([self.left(x), self.right(x)], dim=1)
        scale = torch.sigmoid(self.excite(F.relu(self.squeeze(y.mean((2, 3), keepdim=True)))))
        y = self.head(y * scale)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 4), 1))


def test_branchy_net_widened_to_equal_flops_counted_independently():
    torch.manual_seed(0)
    net = BranchyNet()
    size = (3, 16, 16)
    new, report = reaf_lightning.convert(net, "4-3-4", match="flops", input_size=size, impl="loop")
    assert sorted(report.converted) == ["a", "b", "left", "right"]
    assert "in_channels=3" in report.skipped["stem"] and "network input" in report.skipped["stem"]
    assert "depthwise" in report.skipped["head"] and "1x1" in report.skipped["squeeze"]
    ratio = _flops(new, size) / _flops(net, size)
    assert abs(ratio - 1) < 0.05, ratio  # channel counts of 24-64 move in steps of 4
    assert ratio == pytest.approx(report.macs_ratio, rel=1e-9)  # the report counts the same
    assert new(torch.randn(2, *size)).shape == (2, 7)  # every tensor added/concatenated agrees
    # Widths stay consistent: the residual pair, the concat's parts, what reads them.
    assert new.stem.out_channels == new.b.out_channels == new.a.in_channels == new.bn.num_features
    assert new.squeeze.in_channels == new.left.out_channels + new.right.out_channels
    assert new.excite.out_channels == new.head.in_channels == new.head.groups
    assert new.fc.in_features == new.head.out_channels * 16
    assert new.stem.out_channels > 32 and new.a.out_channels % 4 == 0
    assert net.a.out_channels == 48 and isinstance(net.a, nn.Conv2d)  # the input is untouched


def test_match_params_against_an_independent_parameter_count():
    with torch.device("meta"):  # parameters only: no memory, no compute
        net = torchvision.models.vgg11(num_classes=10)
    new, report = reaf_lightning.convert(net, "4-3-4", match="params", input_size=(3, 32, 32))
    independent = sum(p.numel() for p in new.parameters()) / sum(
        p.numel() for p in net.parameters()
    )
    assert independent == pytest.approx(report.params_ratio)
    assert abs(independent - 1) < 0.04
    assert len(report.converted) == 7 and list(report.skipped) == ["features.0"]


def test_resnet50_at_equal_flops_lands_on_the_papers_reaf_resnet50():
    """Paper Table 1: REAF-ResNet50 4-3-4 keeps ResNet50's cost with C = 72."""
    with torch.device("meta"):
        resnet50 = torchvision.models.resnet50()
        paper = create_model("reaf_resnet50", stem="imagenet", num_classes=1000)
    new, report = reaf_lightning.convert(resnet50, "4-3-4", match="flops")
    assert (report.width, report.reference_width) == (72, 64)
    assert [new.get_submodule(f"layer{s}.0.conv2").in_channels for s in (1, 2, 3, 4)] == [
        72,
        144,
        288,
        576,
    ]
    assert sorted(n for n, m in new.named_modules() if isinstance(m, REAFConv2d)) == sorted(
        n for n, m in paper.named_modules() if isinstance(m, REAFConv2d)
    )
    assert {k: v.shape for k, v in new.state_dict().items()} == {
        k: v.shape for k, v in paper.state_dict().items()
    }
    assert report.macs == (count_macs(resnet50), count_macs(paper))
    assert report.params[1] == count_parameters(paper)


def test_resnet18_converted_is_both_convs_and_the_papers_network_is_reached_from_width_72():
    """docs/convert.md: torchvision's ResNet18 converts as "both convs, C everywhere"; the
    paper's REAF-ResNet18 (first 3x3 conv, Table 5's 11.74 M) from the dense net at C = 72."""

    def shapes(net: nn.Module) -> dict:
        return {k: v.shape for k, v in net.state_dict().items()}

    def reaf_layers(net: nn.Module) -> list[str]:
        return sorted(n for n, m in net.named_modules() if isinstance(m, REAFConv2d))

    with torch.device("meta"):
        resnet18 = torchvision.models.resnet18()
        both = create_model("reaf_resnet18", reaf_convs="all", base_channels=72, stem="imagenet")
        paper = create_model("reaf_resnet18", stem="imagenet")
        dense = create_model("resnet18", width=72, stem="imagenet")
    new, report = reaf_lightning.convert(resnet18, "4-3-4")
    assert shapes(new) == shapes(both) and reaf_layers(new) == reaf_layers(both)
    assert (report.width, report.params[1]) == (72, count_parameters(both))
    new, report = reaf_lightning.convert(dense, "4-3-4", match=None, include="layer*.conv1")
    assert shapes(new) == shapes(paper) and reaf_layers(new) == reaf_layers(paper)
    assert report.params[1] == count_parameters(paper) and round(report.params[1] / 1e6, 2) == 11.74
    assert report.macs[1] == count_macs(paper)


def test_match_none_keeps_widths_and_the_weights_where_connectivity_is_kept():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(8, 12, 3, padding=1, bias=True),
        nn.ReLU(),
        nn.Conv2d(12, 8, (3, 3), groups=4, padding=(1, 1)),
        nn.Conv2d(8, 6, 3),
    )
    x = torch.randn(2, 8, 9, 9)
    # 4-1-4 is exactly a conv with groups=4 (paper §III-D): that layer keeps its weights.
    new, report = reaf_lightning.convert(net, "4-1-4", None, grouped=True, input_size=(8, 9, 9))
    assert sorted(report.converted) == ["0", "2"]
    assert report.skipped == {"3": "out_channels=6 is not divisible by G_O=4"}
    hidden = torch.randn(2, 12, 9, 9)
    assert isinstance(new[2], REAFConv2d)
    torch.testing.assert_close(new[2](hidden), net[2](hidden), rtol=1e-5, atol=1e-5)
    assert (new[0].in_channels, new[0].out_channels) == (8, 12) and new(x).shape == net(x).shape
    assert isinstance(net[0], nn.Conv2d)  # the input network is untouched
    # 2-2-1 connects every output to every input: a dense conv, weights kept exactly.
    dense, _ = reaf_lightning.convert(net[:2], "2-2-1", match=None, input_size=(8, 9, 9))
    torch.testing.assert_close(dense(x), net[:2](x), rtol=1e-5, atol=1e-5)


def test_include_exclude_and_pointwise_choose_layers():
    with torch.device("meta"):
        net = torchvision.models.resnet34(num_classes=4)
    _, report = reaf_lightning.convert(
        net, "2-1-2", match=None, include=["layer3.*"], exclude=["layer3.0.*"], pointwise=True
    )
    assert sorted(report.converted) == sorted(
        f"layer3.{b}.conv{c}" for b in range(1, 6) for c in (1, 2)
    )
    assert "include" in report.skipped["layer2.0.conv1"]
    assert "exclude" in report.skipped["layer3.0.downsample.0"]


def test_untraceable_network_is_named_and_match_none_still_converts():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="cannot trace DataDependent.*match=None"):
        reaf_lightning.convert(DataDependent(), "4-3-4", input_size=(4, 8, 8))
    _, report = reaf_lightning.convert(DataDependent(), "4-3-4", match=None)
    assert list(report.converted) == ["conv"]


def test_channel_slicing_keeps_the_widths_it_touches():
    class Sliced(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(4, 8, 3, padding=1)
            self.b = nn.Conv2d(4, 6, 3, padding=1)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(self.a(x)[:, :4])

    new, report = reaf_lightning.convert(Sliced(), "2-1-2", input_size=(4, 8, 8))
    assert (new.a.out_channels, new.b.in_channels) == (8, 4)  # the slice: never widened
    assert isinstance(new.a, REAFConv2d) and isinstance(new.b, REAFConv2d)
    assert "network input" in report.kept_widths["a"] and "getitem" in report.kept_widths["a"]
    assert "getitem" in report.kept_widths["b"] and "network output" in report.kept_widths["b"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"match": "area"}, "match='area' must be"),
        ({"reaf": "4-3-5"}, "G_O must be C"),
        ({"impl": "fast"}, "impl='fast'"),
    ],
)
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        reaf_lightning.convert(nn.Conv2d(4, 4, 3), **settings)


def test_build_network_builds_allow_listed_networks_converted():
    with torch.device("meta"):
        net = build_network(
            "torchvision.resnet18",
            num_classes=5,
            convert={"reaf": "4-3-4", "match": "flops", "input_size": [3, 32, 32]},
        )
    assert isinstance(net.layer1[0].conv1, REAFConv2d) and net.fc.out_features == 5
    for name, message in [
        ("os.system", "must start with 'torchvision.' or 'timm.'"),
        ("torchvision.utils", "unknown torchvision classification model 'utils'"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_network(name)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['ratio'\]"):
        build_network("resnet18", convert={"ratio": 2})
    with pytest.raises(ValueError, match="unknown model 'torchvision.resnet18'"):
        create_model("torchvision.resnet18")  # the registry builds its own names only
