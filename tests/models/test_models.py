"""Model zoo: every registered model trains a step; torchvision weights load; counts by hand."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from reaf_lightning.layers import REAFConv2d, REAFPlusConv2d
from reaf_lightning.models import create_model, list_models
from reaf_lightning.models.complexity import count_macs, count_parameters

REQUIRED = {
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "wide_resnet50_2",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "mobilenet_v2",
    "reaf_resnet18",
    "reaf_resnet34",
    "reaf_resnet50",
    "reaf_resnet101",
    "reaf_wide_resnet50",
    "reaf_plus_resnext50_32x4d",
    "reaf_plus_mobilenet_v2",
    "resnext50_g4_all",
    "resnext101_g4_all",
    "reaf_all_resnet50",
    "reaf_all_resnet101",
    "reaf_plus_reaf_resnet50",
    "reaf_plus_reaf_resnet101",
}
STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def bottleneck_params(depth: int, width: int, fraction: float, classes: int, stem: str) -> int:
    """Parameters of a bottleneck ResNet whose three block convs keep ``fraction`` of their
    dense weights (1/G for G groups, G_M/G_I for REAF); shortcut projections stay dense.

    Written from the architecture tables (paper Tables 1-2), independently of the model code.
    """
    total = 3 * 64 * (49 if stem == "imagenet" else 9) + 2 * 64  # stem conv + BN
    in_channels = 64
    for stage, blocks in enumerate(STAGES[depth]):
        c, out = width * 2**stage, 256 * 2**stage
        for i in range(blocks):
            convs = in_channels * c + 9 * c * c + c * out
            total += round(convs * fraction) + 2 * (c + c + out)  # + three BNs
            if i == 0:
                total += in_channels * out + 2 * out  # shortcut conv + BN
            in_channels = out
    return total + in_channels * classes + classes


def test_registry_has_paper_models() -> None:
    assert REQUIRED <= set(list_models())
    assert list_models("test_*") == ["test_reaf_plus_resnet", "test_reaf_resnet", "test_resnet"]


def _forward_backward(name: str, **kwargs) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, stem="cifar", **kwargs)
    x = torch.randn(2, 3, 16, 16)  # the structure is under test, not the resolution
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f"{name}: parameters without gradient: {missing[:5]}"


NARROW = {"base_channels": 16, "width": 32, "impl": "decompose"}  # divisible by every grouping
# One case per block structure (tiny or narrow: the structure is under test, not the size);
# every registered name at full size runs in the slow tier.
STRUCTURES = {
    "test_resnet": {},
    "test_reaf_resnet": {"impl": "decompose"},
    "test_reaf_resnet-all": {"impl": "decompose", "reaf_convs": "all"},
    "test_reaf_plus_resnet": {},
    "reaf_resnet18": NARROW,
    "resnext50_g4_all": NARROW,
    "mobilenet_v2": {},
    "reaf_plus_mobilenet_v2": {},
}


@pytest.mark.parametrize("case", STRUCTURES)
def test_forward_backward_every_parameter_gets_gradient(case: str) -> None:
    _forward_backward(case.split("-")[0], **STRUCTURES[case])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith("test_")])
def test_forward_backward_full_size(name: str) -> None:
    _forward_backward(name)


@pytest.mark.parametrize("name", ["reaf_resnet18", "reaf_plus_mobilenet_v2", "test_reaf_resnet"])
def test_imagenet_stem_shapes(name: str) -> None:
    model = create_model(name, num_classes=5, stem="imagenet").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_exact_call_from_issue() -> None:
    model = create_model(
        "reaf_resnet50", num_classes=100, stem="cifar", width=72, out_width=72, reaf="4-3-4"
    )
    reaf_convs = [m for m in model.modules() if isinstance(m, REAFConv2d)]
    assert len(reaf_convs) == 16  # one per bottleneck (3 + 4 + 6 + 3)
    assert all(str(m.spec) == "4-3-4" for m in reaf_convs)
    assert [m.in_channels for m in reaf_convs[:1]] == [72]
    assert model.fc.out_features == 100
    assert isinstance(model.maxpool, nn.Identity) and model.conv1.kernel_size == (3, 3)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        ("resnet18", torchvision.models.resnet18),
        ("resnet50", torchvision.models.resnet50),
        pytest.param("wide_resnet50_2", torchvision.models.wide_resnet50_2, marks=pytest.mark.slow),
        ("resnext50_32x4d", torchvision.models.resnext50_32x4d),
        ("mobilenet_v2", torchvision.models.mobilenet_v2),
    ],
)
def test_torchvision_state_dict_loads_and_matches(ours, theirs) -> None:
    """Two implementations, one state_dict: identical outputs (torchvision is the reference)."""
    torch.manual_seed(0)
    reference = theirs(weights=None, num_classes=10).eval()
    with torch.no_grad():  # non-trivial BN statistics so a mismatch cannot hide
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model = create_model(ours, num_classes=10, stem="imagenet").eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def test_reaf_parameter_saving_by_hand() -> None:
    """REAF-ResNet50 saves (1 - G_M/G_I) of each middle conv's dense weights (hand formula)."""
    dense = create_model("resnet50", num_classes=100, stem="cifar", width=72)
    reaf = create_model("reaf_resnet50", num_classes=100, stem="cifar", width=72, reaf="4-3-4")
    blocks = (3, 4, 6, 3)
    saved = sum(n * (72 * s) * (72 * s) * 9 // 4 for n, s in zip(blocks, (1, 2, 4, 8)))
    assert count_parameters(dense) - count_parameters(reaf) == saved


@pytest.mark.parametrize(
    "name,depth,width,fraction",
    [
        ("resnext50_g4_all", 50, 128, 1 / 4),
        ("resnext101_g4_all", 101, 128, 1 / 4),
        ("reaf_all_resnet50", 50, 64, 3 / 4),
        ("reaf_all_resnet101", 101, 64, 3 / 4),
    ],
)
@pytest.mark.parametrize("stem,classes", [("cifar", 100), ("imagenet", 1000)])
def test_all_convs_grouped_or_reaf_count_by_hand(name, depth, width, fraction, stem, classes):
    """Paper Tables 2 and 6: G = 4 (or REAF 4-3-4) on all three bottleneck convs."""
    with torch.device("meta"):
        model = create_model(name, num_classes=classes, stem=stem)
    assert count_parameters(model) == bottleneck_params(depth, width, fraction, classes, stem)
    block = model.layer3[1]
    if name.startswith("resnext"):
        assert [c.groups for c in (block.conv1, block.conv2, block.conv3)] == [4, 4, 4]
    else:
        assert all(isinstance(c, REAFConv2d) for c in (block.conv1, block.conv2, block.conv3))
    assert type(model.layer3[0].downsample[0]) is nn.Conv2d  # dense shortcut (ours)


def basic_params(blocks: tuple, fractions: tuple[float, float], classes: int, stem: str) -> int:
    """Parameters of a ResNet18/34 whose two 3x3 convs keep ``fractions`` of their dense
    weights (REAF 4-3-4: 3/4), C = 72 on the first conv's output; independent of the code."""
    total = 3 * 64 * (49 if stem == "imagenet" else 9) + 2 * 64
    in_channels = 64
    for stage, n in enumerate(blocks):
        c, out = 72 * 2**stage, 64 * 2**stage
        for i in range(n):
            total += round(9 * in_channels * c * fractions[0]) + 2 * c
            total += round(9 * c * out * fractions[1]) + 2 * out
            if i == 0 and stage > 0:
                total += in_channels * out + 2 * out
            in_channels = out
    return total + in_channels * classes + classes


@pytest.mark.parametrize(
    "name,blocks,stem,classes,first,both",
    [  # the counts docs/paper_inconsistencies.md reports for two of the readings
        ("reaf_resnet18", (2, 2, 2, 2), "cifar", 100, 11.267, 9.504),
        ("reaf_resnet34", (3, 4, 6, 3), "cifar", 100, 21.217, 18.035),
        ("reaf_resnet18", (2, 2, 2, 2), "imagenet", 1000, 11.736, 9.974),
    ],
)
def test_basic_block_reaf_placements_by_hand(name, blocks, stem, classes, first, both) -> None:
    """Paper Tables 4-5 give only "C = 72, 4-3-4" for ResNet18/34: our reading (REAF on the
    first conv) and "both convs" (``reaf_convs='all'``) against the hand formula."""
    for convs, fractions, documented in (
        ("middle", (3 / 4, 1), first),
        ("all", (3 / 4,) * 2, both),
    ):
        with torch.device("meta"):
            model = create_model(name, num_classes=classes, stem=stem, reaf_convs=convs)
        expected = basic_params(blocks, fractions, classes, stem)
        assert count_parameters(model) == expected
        assert round(expected / 1e6, 3) == documented


def test_reaf_plus_on_reaf_count_by_hand() -> None:
    """REAF+ (g_O = 2) on the third conv of a REAF-ResNet50 adds one more (gamma, beta) pair
    per input channel of that conv: (g_O - 1) * 2 * C' * s per block (paper Eq. 8)."""
    with torch.device("meta"):
        plus = create_model("reaf_plus_reaf_resnet50", num_classes=100, stem="cifar")
        reaf = create_model("reaf_resnet50", num_classes=100, stem="cifar")
    extra = sum(n * (2 - 1) * 2 * 72 * s for n, s in zip(STAGES[50], (1, 2, 4, 8)))
    assert count_parameters(plus) - count_parameters(reaf) == extra == 8496
    block = plus.layer1[0]
    assert isinstance(block.conv2, REAFConv2d) and str(block.conv2.spec) == "4-3-4"
    assert isinstance(block.conv3, REAFPlusConv2d) and block.conv3.groups_out == 2
    with pytest.raises(ValueError, match="REAF\\+ on the third conv needs a dense third conv"):
        create_model("reaf_plus_reaf_resnet50", reaf_convs="all")


def test_table1_stage_widths() -> None:
    """Paper Table 1: REAF-ResNet50 (72-72, 4-3-4) has 72/144/288/576 channels per stage."""
    model = create_model("reaf_resnet50", stem="imagenet")
    widths = [getattr(model, f"layer{i}")[0].conv2.in_channels for i in (1, 2, 3, 4)]
    assert widths == [72, 144, 288, 576]


def test_cifar_mobilenet_v2_is_the_pytorch_cifar100_network() -> None:
    """Paper Table 7 (CIFAR-100): 2.37 M / 2.38 M with REAF+. An independent transcription
    of the pytorch-cifar100 MobileNetV2 (bias in every conv, 1x1 stem with padding 1,
    expansion conv also for t = 1, the 160-channel stage at stride 1) has our counts."""

    def block(i: int, o: int, stride: int, t: int) -> list[nn.Module]:
        h = i * t
        return [
            nn.Conv2d(i, h, 1),
            nn.BatchNorm2d(h),
            nn.Conv2d(h, h, 3, stride, 1, groups=h),
            nn.BatchNorm2d(h),
            nn.Conv2d(h, o, 1),
            nn.BatchNorm2d(o),
        ]

    layers = [nn.Conv2d(3, 32, 1, padding=1), nn.BatchNorm2d(32), *block(32, 16, 1, 1)]
    stages = [(16, 24, 2, 2), (24, 32, 3, 2), (32, 64, 4, 2), (64, 96, 3, 1), (96, 160, 3, 1)]
    for i, o, n, stride in stages + [(160, 320, 1, 1)]:
        layers += block(i, o, stride, 6) + [m for _ in range(n - 1) for m in block(o, o, 1, 6)]
    layers += [nn.Conv2d(320, 1280, 1), nn.BatchNorm2d(1280), nn.Conv2d(1280, 100, 1)]
    reference = nn.Sequential(*layers)
    ours = create_model("mobilenet_v2", num_classes=100, stem="cifar")
    assert count_parameters(ours) == count_parameters(reference) == 2_369_380
    convs = sum(isinstance(m, nn.Conv2d) for m in reference.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in ours.modules()) + 1 == convs  # + fc as a conv
    plus = create_model("reaf_plus_mobilenet_v2", num_classes=100, stem="cifar")
    projections = [m for m in plus.modules() if isinstance(m, REAFPlusConv2d)]
    extra = sum(2 * p.in_channels - p.out_channels for p in projections)  # BN pair - bias
    assert count_parameters(plus) == count_parameters(ours) + extra == 2_382_148
    assert ours.features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (5, 5)


def test_count_macs_by_hand() -> None:
    model = nn.Sequential(
        REAFConv2d(8, 4, 3, 4, 3, stride=2),  # out 4x4x4 positions x (3 groups * 2 ch * 9)
        nn.Conv2d(4, 6, 1, groups=2),  # out 6x4x4 x (2 ch)
        REAFPlusConv2d(6, 4, 1, groups_out=2),  # out 4x4x4 x 6
        nn.Flatten(),
        nn.Linear(64, 3),
    )
    expected = 4 * 16 * 54 + 6 * 16 * 2 + 4 * 16 * 6 + 64 * 3
    assert count_macs(model, (8, 8, 8)) == expected


def test_plain_models_refuse_reaf_arguments() -> None:
    with pytest.raises(ValueError, match="resnet50: unexpected argument 'reaf'"):
        create_model("resnet50", reaf="4-3-4")
    with pytest.raises(ValueError, match="unknown model 'resnet51'; valid names: mobilenet_v2"):
        create_model("resnet51")
    with pytest.raises(ValueError, match="REAF 4-3-5: G_O must be C\\(4, 3\\) = 4"):
        create_model("reaf_resnet50", reaf="4-3-5")
    with pytest.raises(ValueError, match="in_channels=70 is not divisible by G_I=4"):
        create_model("reaf_resnet50", width=70, out_width=72, reaf="4-3-4")
    with pytest.raises(ValueError, match="stem='mnist' must be 'cifar' or 'imagenet'"):
        create_model("resnet18", stem="mnist")


def test_reaf_all_and_reaf_plus_structure() -> None:
    model = create_model("reaf_resnet50", width=64, reaf="4-3-4", reaf_convs="all", stem="cifar")
    block = model.layer2[0]
    assert all(isinstance(c, REAFConv2d) for c in (block.conv1, block.conv2, block.conv3))
    plus = create_model("reaf_plus_resnext50_32x4d", stem="cifar")
    assert isinstance(plus.layer1[0].conv3, REAFPlusConv2d) and not hasattr(plus.layer1[0], "bn2")
    mb = create_model("reaf_plus_mobilenet_v2", stem="cifar")
    assert sum(isinstance(m, REAFPlusConv2d) for m in mb.modules()) == 17


def test_the_reaf_setting_is_parsed_once_and_reaches_every_layer() -> None:
    model = create_model("test_reaf_resnet", num_classes=10, reaf=(4, 2))
    specs = [m.spec for m in model.modules() if isinstance(m, REAFConv2d)]
    assert str(model.reaf) == "4-2-6" and len(specs) == 4
    assert all(spec is model.reaf for spec in specs)  # one REAFSpec, never rebuilt from ints


def test_a_runs_network_is_counted_as_the_builder_it_is_given_builds() -> None:
    """A run's network may be any name a config gives: counted on the meta device as
    ``build_network`` builds it, against the same network built for real and counted."""
    from reaf_lightning.conversion.sources import build_network
    from reaf_lightning.models.complexity import network_complexity, network_cost

    kwargs = {"convert": {"reaf": "4-3-4", "match": None}}
    counted = network_complexity("torchvision.resnet18", kwargs, 10, (3, 32, 32), build_network)
    real = build_network("torchvision.resnet18", num_classes=10, **kwargs)
    assert sum(isinstance(m, REAFConv2d) for m in real.modules()) > 0
    assert counted["complexity/macs"] == count_macs(real, (3, 32, 32))
    assert counted["complexity/params"] == count_parameters(real)
    with pytest.raises(ValueError, match="unknown model 'torchvision.resnet18'"):
        network_cost("torchvision.resnet18", {}, (3, 32, 32))  # the registry's own builder
