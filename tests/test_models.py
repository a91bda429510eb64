"""Model zoo: every registered model trains a step; torchvision weights load; counts."""

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
}


def test_registry_has_paper_models() -> None:
    assert REQUIRED <= set(list_models())
    assert list_models("test_*") == ["test_reaf_plus_resnet", "test_reaf_resnet", "test_resnet"]


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_parameter_gets_gradient(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, stem="cifar")
    x = torch.randn(2, 3, 16, 16)  # the structure is under test, not the resolution
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f"{name}: parameters without gradient: {missing[:5]}"


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
        ("wide_resnet50_2", torchvision.models.wide_resnet50_2),
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
