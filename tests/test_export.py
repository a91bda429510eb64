"""Networks out to the ecosystem: bare weights, torch.hub, timm, torch.export and ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import REPO

from reaf_lightning.export import check_export, export_weights, load_network, main
from reaf_lightning.models import create_model, list_models
from reaf_lightning.models.hub import hub_entrypoints


def test_torch_export_of_a_reaf_network_matches_eager():
    torch.manual_seed(0)
    net = create_model("test_reaf_resnet", num_classes=10, impl="masked")  # no autotuning
    differences = check_export(net, torch.randn(2, 3, 8, 8))
    assert differences["torch.export"] < 1e-5


def test_torch_hub_local_source_builds_the_registry_networks():
    assert sorted(hub_entrypoints()) == list_models()
    net = torch.hub.load(str(REPO), "test_reaf_resnet", source="local", num_classes=3)
    reference = create_model("test_reaf_resnet", num_classes=3)
    assert {k: v.shape for k, v in net.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    with pytest.raises(ValueError, match="no pretrained weights"):
        torch.hub.load(str(REPO), "test_reaf_resnet", source="local", pretrained=True)


def test_the_export_command_parses_as_every_command_and_says_one_line(tmp_path, capsys):
    from jsonargparse import ArgumentError

    from reaf_lightning.errors import one_line
    from reaf_lightning.export import PROG, build_parser

    missing = str(tmp_path / "missing.ckpt")
    with pytest.raises(ArgumentError) as direct:  # jsonargparse's own words, independently
        build_parser().parse_args([missing])
    for args, line in [
        ([missing], one_line(direct.value)),
        ([missing, str(tmp_path / "out")], f"checkpoint not found: {missing}"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"{PROG}: error: {line}\n"
    assert list(tmp_path.iterdir()) == []


def test_an_export_description_names_a_network_never_code(tmp_path):
    from safetensors.torch import save_file

    from reaf_lightning.errors import CheckpointError, ConfigError

    torch.manual_seed(0)
    net = create_model("test_resnet", num_classes=3).eval()
    save_file(net.state_dict(), str(tmp_path / "n.safetensors"))
    description = tmp_path / "n.json"
    for text, error, message in [
        ("[1]", CheckpointError, "n.json: not an export description"),
        ('{"arch": "os.system", "num_classes": 3}', ConfigError, "must start with 'torchvision."),
        ('{"arch": "test_resnet", "num_classes": 4}', CheckpointError, "shape mismatches"),
    ]:
        description.write_text(text)
        with pytest.raises(error, match=message):
            load_network(tmp_path / "n")
    description.write_text('{"arch": "test_resnet", "arch_kwargs": {}, "num_classes": 3}')
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(load_network(tmp_path / "n")(x), net(x), rtol=0, atol=0)


def _fit(tmp_path: Path, arch: str, arch_kwargs: dict) -> Path:
    """A real one-epoch Lightning fit of a few digits batches; the checkpoint it wrote."""
    import lightning.pytorch as pl

    from reaf_lightning import ImageClassifier
    from reaf_lightning.data import DigitsDataModule

    pl.seed_everything(0)
    module = ImageClassifier(arch, arch_kwargs, num_classes=10)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(module, DigitsDataModule(batch_size=16, image_size=32, num_workers=0))
    return next((tmp_path / "checkpoints").glob("*.ckpt"))


@pytest.mark.slow
def test_plain_export_loads_into_torchvision_and_timm_strictly(tmp_path):
    checkpoint = _fit(tmp_path, "resnet18", {"stem": "imagenet"})
    stem = tmp_path / "export" / "resnet18"
    stem.parent.mkdir()
    paths = export_weights(checkpoint, stem)
    assert [p.name for p in paths] == ["resnet18.pt", "resnet18.safetensors", "resnet18.json"]
    state = torch.load(paths[0], weights_only=True)
    assert not any(k.startswith("net.") for k in state)
    trained = torch.load(checkpoint, weights_only=True)["state_dict"]
    x = torch.randn(2, 3, 32, 32)
    tv = torchvision.models.resnet18(num_classes=10)
    tv.load_state_dict(state, strict=True)
    ours = create_model("resnet18", stem="imagenet", num_classes=10)
    ours.load_state_dict({k[4:]: v for k, v in trained.items() if k.startswith("net.")})
    torch.testing.assert_close(tv.eval()(x), ours.eval()(x))
    from safetensors.torch import load_file

    timm = pytest.importorskip("timm")
    timm.create_model("resnet18", num_classes=10).load_state_dict(load_file(paths[1]), strict=True)
    with pytest.raises(SystemExit) as exit_info:  # never overwrites an export
        main([str(checkpoint), str(stem)])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_reaf_export_reloads_with_create_model_and_exports_to_onnx(tmp_path):
    checkpoint = _fit(tmp_path, "test_reaf_resnet", {})
    with pytest.raises(SystemExit) as exit_info:
        main([str(checkpoint), str(tmp_path / "net")])
    assert exit_info.value.code == 0
    assert json.loads((tmp_path / "net.json").read_text()) == {
        "arch": "test_reaf_resnet",
        "arch_kwargs": {},
        "num_classes": 10,
    }
    net = load_network(tmp_path / "net")
    reference = create_model("test_reaf_resnet", num_classes=10)
    trained = torch.load(checkpoint, weights_only=True)["state_dict"]
    reference.load_state_dict({k[4:]: v for k, v in trained.items() if k.startswith("net.")})
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(net(x), reference.eval()(x))
    pytest.importorskip("onnxruntime")
    differences = check_export(net, x, tmp_path / "net.onnx")
    assert max(differences.values()) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_zoo_network_exports_to_torch_export_and_onnx(name, tmp_path):
    """Every registered network at CIFAR size, against eager (ONNX Runtime where installed)."""
    torch.manual_seed(0)
    net = create_model(name, num_classes=10, stem="cifar")
    onnx_path = tmp_path / f"{name}.onnx"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        onnx_path = None
    differences = check_export(net, torch.randn(2, 3, 32, 32), onnx_path)
    assert max(differences.values()) < 1e-4, differences
