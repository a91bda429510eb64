"""Where a bottleneck downsamples: ``stride_on="1x1"`` (the original ResNet) or ``"3x3"``.

Both layouts are checked against independent constructions: torchvision's
ResNet50 (stride on the 3x3) and the same network with its first-block strides
moved onto the 1x1 by hand, loaded with one ``state_dict``; and their MACs
against a closed-form count written from the architecture table.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from reaf_lightning.models import create_model
from reaf_lightning.models.complexity import count_macs, count_parameters


def _hand_macs(blocks: tuple[int, ...], width: int, stride_on: str) -> int:
    """MACs of an ImageNet bottleneck ResNet at 224x224, from the architecture table alone."""
    total = 7 * 7 * 3 * 64 * 112 * 112  # stem conv, 112x112 output
    in_channels, size = 64, 56  # after the max pool
    for stage, count in enumerate(blocks):
        c, out = width * 2**stage, 256 * 2**stage
        out_size = size if stage == 0 else size // 2
        for i in range(count):
            first_size = size if (i == 0 and stride_on == "3x3") else out_size
            total += in_channels * c * first_size**2  # 1x1 (strided here for "1x1")
            total += 9 * c * c * out_size**2  # 3x3 (strided here for "3x3")
            total += c * out * out_size**2  # 1x1 expansion
            if i == 0:
                total += in_channels * out * out_size**2  # shortcut projection
            in_channels, size = out, out_size
    return total + in_channels * 1000  # classifier


def _torchvision_resnet50(stride_on: str) -> nn.Module:
    """torchvision's ResNet50; for ``"1x1"`` its downsampling strides moved by hand."""
    model = torchvision.models.resnet50(weights=None, num_classes=10)
    if stride_on == "1x1":
        for stage in (model.layer2, model.layer3, model.layer4):
            stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    return model


@pytest.mark.parametrize(
    "stride_on",
    # "3x3" is also tests/models/test_models.py's torchvision check (fast tier there).
    [pytest.param("3x3", marks=pytest.mark.slow), "1x1"],
)
def test_layout_equals_an_independent_construction(stride_on: str) -> None:
    torch.manual_seed(0)
    reference = _torchvision_resnet50(stride_on).eval()
    model = create_model("resnet50", num_classes=10, stem="imagenet", stride_on=stride_on).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
        # The two layouts are different functions, so the check above can fail: moving the
        # strides of our network back changes its output.
        for stage in (model.layer2, model.layer3, model.layer4):
            stage[0].conv1.stride = (1, 1) if stride_on == "1x1" else (2, 2)
            stage[0].conv2.stride = (2, 2) if stride_on == "1x1" else (1, 1)
        assert not torch.allclose(model(x), reference(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("stride_on", ["3x3", "1x1"])
def test_resnet50_macs_by_hand_and_params_unchanged(stride_on: str) -> None:
    with torch.device("meta"):
        model = create_model("resnet50", num_classes=1000, stem="imagenet", stride_on=stride_on)
    assert count_macs(model, (3, 224, 224)) == _hand_macs((3, 4, 6, 3), 64, stride_on)
    assert count_parameters(model) == 25_557_032  # torchvision's ResNet50, either layout


def test_the_papers_resnet50_gflops_are_the_original_layouts() -> None:
    """Paper Tables 1 and 5: ResNet50 3.86 GFLOPs, ResNet101 7.57 (printed, two decimals)."""
    assert _hand_macs((3, 4, 6, 3), 64, "1x1") / 1e9 == pytest.approx(3.86, abs=0.005)
    assert _hand_macs((3, 4, 23, 3), 64, "1x1") / 1e9 == pytest.approx(7.57, abs=0.005)
    assert _hand_macs((3, 4, 6, 3), 64, "3x3") / 1e9 == pytest.approx(4.09, abs=0.005)


def test_reaf_conv_loses_the_stride_under_the_original_layout() -> None:
    model = create_model("test_reaf_resnet", stride_on="1x1")
    first = model.layer2[0]
    assert (first.conv1.stride, first.conv2.stride) == ((2, 2), 1)
    assert type(first.conv2).__name__ == "REAFConv2d"
    out = model(torch.randn(2, 3, 16, 16))
    out.sum().backward()
    assert out.shape == (2, 10) and all(p.grad is not None for p in model.parameters())


def test_layout_option_is_checked() -> None:
    with pytest.raises(ValueError, match="stride_on='2x2' must be '1x1' or '3x3'"):
        create_model("resnet50", stride_on="2x2")
    with pytest.raises(ValueError, match="a BasicBlock has no 1x1 conv"):
        create_model("resnet18", stride_on="1x1")
