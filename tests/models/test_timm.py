"""timm's standard model arguments on the REAF networks, against timm's own ResNet18/MobileNetV2.

``import reaf_lightning.timm`` registers the ``reaf_*`` networks; the arguments are
checked against timm's networks given the same arguments: feature maps (shapes,
channels, reductions), and, where the weights are the same (the package's plain
ResNet18 has timm's ``state_dict`` names), the very numbers.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from reaf_lightning.models import create_model

timm = pytest.importorskip("timm")
reaf_timm = pytest.importorskip("reaf_lightning.timm")
pytestmark = pytest.mark.usefixtures("one_thread")


def _same_weights(ours: torch.nn.Module, theirs: torch.nn.Module) -> torch.nn.Module:
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours


@pytest.mark.parametrize("out_indices", [None, (1, 3), 2])
def test_features_only_returns_timms_resnet18_feature_maps(out_indices) -> None:
    kwargs = {} if out_indices is None else {"out_indices": out_indices}
    ours = timm.create_model("reaf_resnet18", features_only=True, **kwargs)
    theirs = timm.create_model("resnet18", features_only=True, **kwargs)
    x = torch.randn(2, 3, 64, 64)
    assert [f.shape for f in ours(x)] == [f.shape for f in theirs(x)]
    assert ours.feature_info.channels() == theirs.feature_info.channels()
    assert ours.feature_info.reduction() == theirs.feature_info.reduction()


def test_features_only_of_the_plain_network_are_timms_numbers() -> None:
    """Same weights, same feature maps: the stem's output and each stage's, in_chans=2."""
    theirs = timm.create_model("resnet18", features_only=True, in_chans=2).eval()
    ours = reaf_timm.feature_extractor(create_model("resnet18", in_chans=2))
    ours = _same_weights(ours, theirs).eval()
    x = torch.randn(2, 2, 48, 48)
    for got, expected in zip(ours(x), theirs(x), strict=True):
        torch.testing.assert_close(got, expected)


def test_reaf_mobilenet_v2_features_are_timms_mobilenetv2_stages() -> None:
    ours = timm.create_model("reaf_plus_mobilenet_v2", features_only=True, in_chans=1)
    theirs = timm.create_model("mobilenetv2_100", features_only=True, in_chans=1)
    x = torch.randn(1, 1, 64, 64)
    assert [f.shape for f in ours(x)] == [f.shape for f in theirs(x)]
    assert ours.feature_info.reduction() == theirs.feature_info.reduction()


@pytest.mark.parametrize(
    "global_pool, num_classes",
    [("avg", 0), ("max", 7), ("avgmax", 0), ("catavgmax", 7), ("catavgmax", 0), ("", 0)],
)
def test_pooling_and_classifier_arguments_compute_what_timms_do(global_pool, num_classes):
    args = {"num_classes": num_classes, "global_pool": global_pool, "in_chans": 1}
    theirs = timm.create_model("resnet18", **args).eval()
    ours = _same_weights(create_model("resnet18", **args), theirs).eval()
    x = torch.randn(2, 1, 40, 40)
    torch.testing.assert_close(ours(x), theirs(x))


def test_the_registered_reaf_network_takes_them_too() -> None:
    args = {"num_classes": 0, "global_pool": "catavgmax", "in_chans": 1}
    reaf = timm.create_model("reaf_resnet18", **args).eval()
    assert reaf(torch.randn(2, 1, 40, 40)).shape == (2, 1024)  # 2 x 512: avg and max


def test_drop_rate_drops_what_timms_drops() -> None:
    """Training mode: the same dropout mask from the same seed (BN uses batch statistics)."""
    theirs = timm.create_model("resnet18", num_classes=5, drop_rate=0.5).train()
    ours = _same_weights(create_model("resnet18", num_classes=5, drop_rate=0.5), theirs).train()
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(3)
    expected = theirs(x)
    torch.manual_seed(3)
    torch.testing.assert_close(ours(x), expected)
    ours.eval()
    assert not torch.equal(ours(x), ours.train()(x))  # dropout is on in training only


def test_mobilenet_v2_head_arguments_match_timms_shapes() -> None:
    for args in ({"num_classes": 0}, {"num_classes": 0, "global_pool": "catavgmax"}):
        ours = timm.create_model("reaf_plus_mobilenet_v2", in_chans=2, drop_rate=0.1, **args)
        theirs = timm.create_model("mobilenetv2_100", in_chans=2, drop_rate=0.1, **args)
        x = torch.randn(2, 2, 32, 32)
        assert ours.eval()(x).shape == theirs.eval()(x).shape


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"out_indices": (1,)}, "out_indices=(1,) needs features_only=True"),
        ({"features_only": True, "out_indices": (5,)}, "its 5 feature maps (0 to 4)"),
        ({"features_only": True, "out_indices": 0}, "or how many of the last"),
        ({"global_pool": "", "num_classes": 3}, "needs num_classes=0, got 3"),
        ({"global_pool": "mean"}, "global_pool='mean' is not one of"),
        ({"drop_rate": 1.5}, "drop_rate=1.5 must be a dropout probability in [0, 1]"),
        ({"in_chans": 0}, "in_chans=0 must be an integer >= 1"),
        ({"num_classes": -1}, "num_classes=-1 must be an integer >= 0"),
        ({"pretrained": True}, "no pretrained weights are published"),
    ],
)
def test_refusals_are_one_line_naming_the_value(kwargs, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        timm.create_model("reaf_resnet18", **kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_timm_builds_reaf_networks_after_importing_reaf_lightning_timm():
    """A fresh interpreter: the import registers the names; timm's own stay timm's."""
    code = (
        "import timm, reaf_lightning.timm\n"
        "net = timm.create_model('reaf_resnet50', num_classes=7)\n"
        "print(type(net).__module__, net.fc.out_features, "
        "timm.create_model('resnet50').__class__.__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["reaf_lightning.models.resnet", "7", "timm.models.resnet"]
