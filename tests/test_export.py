"""Networks out to the ecosystem: bare weights, torch.hub, timm, torch.export and ONNX."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import REPO
from helpers.strategies import json_values
from hypothesis import given, settings
from hypothesis import strategies as st

from reaf_lightning import ImageClassifier
from reaf_lightning.export import PROG, check_export, export_weights, load_network, main
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


def test_a_run_directory_exports_with_its_inputs_and_class_names(trained_run, tmp_path):
    """The description says what the network expects and answers, as its run recorded it
    (recomputed here from the run's data settings); the three files share one mode."""
    from reaf_lightning.data import DigitsDataModule
    from reaf_lightning.export import read_description

    old = os.umask(0o027)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main([str(trained_run), str(tmp_path / "out" / "net")])
    finally:
        os.umask(old)
    assert exit_info.value.code == 0
    files = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in files] == ["net.json", "net.pt", "net.safetensors"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o640}
    settings = json.loads((trained_run / "metrics.json").read_text())["data"]["init_args"]
    reference = DigitsDataModule(**settings)
    described = read_description(tmp_path / "out" / "net")
    assert described.image_size == reference.image_size == settings["image_size"]
    assert described.mean == pytest.approx(list(reference.mean), rel=1e-7)
    assert described.std == pytest.approx(list(reference.std), rel=1e-7)
    assert described.classes == reference.classes == [str(i) for i in range(10)]
    net = load_network(tmp_path / "out" / "net")
    ours = ImageClassifier.load_from_checkpoint(
        trained_run / "checkpoints" / "last.ckpt", weights_only=True
    ).net.eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(net(x), ours(x), rtol=0, atol=0)


@pytest.mark.parametrize("stem", ["", "out/", "out/..", "out/."])
def test_a_stem_that_names_no_file_is_refused_with_nothing_written(
    trained_run, tmp_path, capsys, monkeypatch, stem
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(trained_run), stem])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"{PROG}: error: output_stem {stem!r} must end in a file-name prefix (e.g. "
        "exports/quickstart, which writes exports/quickstart.pt, .safetensors and .json)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_weights_that_do_not_fit_the_recorded_network_write_nothing(trained_run, tmp_path, capsys):
    content = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    content["hyper_parameters"]["arch_kwargs"] = {"width": 16}  # another network than trained
    crafted = tmp_path / "crafted.ckpt"
    torch.save(content, crafted)
    with pytest.raises(SystemExit) as exit_info:
        main([str(crafted), str(tmp_path / "out" / "net")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "incompatible checkpoint" in err and "shape mismatches" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_classes": "3"}, "num_classes: Input should be a valid integer"),
        ({"num_classes": 3.0}, "num_classes: Input should be a valid integer"),
        ({"num_classes": True}, "num_classes: Input should be a valid integer"),
        ({"num_classes": 0}, "num_classes must be >= 1"),
        ({"classes": ["a", "b"]}, "2 class names for 3 outputs"),
    ],
)
def test_an_export_description_holds_whole_numbers_and_one_name_per_output(
    tmp_path, fields, message
):
    from safetensors.torch import save_file

    from reaf_lightning.errors import CheckpointError

    save_file(
        create_model("test_resnet", num_classes=3).state_dict(), str(tmp_path / "n.safetensors")
    )
    description = {"arch": "test_resnet", "arch_kwargs": {}, "num_classes": 3, **fields}
    (tmp_path / "n.json").write_text(json.dumps(description))
    with pytest.raises(CheckpointError, match=message):
        load_network(tmp_path / "n")


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
        # a plain Trainer without the run record: what it was fed is not known
        "image_size": None,
        "mean": None,
        "std": None,
        "classes": None,
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


#: The deeper ResNets (101) repeat the blocks of their 50-layer versions, which export here.
EXPORT_FAMILIES = [name for name in list_models() if "101" not in name]


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPORT_FAMILIES)
def test_every_block_family_exports_to_torch_export_and_onnx(name, tmp_path):
    """Every registered block family at CIFAR size, against eager (ONNX Runtime where
    installed)."""
    torch.manual_seed(0)
    net = create_model(name, num_classes=10, stem="cifar")
    onnx_path = tmp_path / f"{name}.onnx"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        onnx_path = None
    differences = check_export(net, torch.randn(2, 3, 32, 32), onnx_path)
    assert max(differences.values()) < 1e-4, differences


_json = json_values(max_leaves=6)
_fields = st.sampled_from(["arch", "arch_kwargs", "num_classes", "image_size", "mean", "classes"])


@settings(max_examples=150, deadline=None)
@given(description=st.dictionaries(_fields, _json, max_size=6) | _json)
def test_any_description_reads_whole_or_is_one_refusal(tmp_path_factory, description):
    """A description is untrusted input: whatever JSON it holds, reading it gives a checked
    description or one CheckpointError naming the file."""
    from reaf_lightning.errors import CheckpointError
    from reaf_lightning.export import read_description

    folder = tmp_path_factory.mktemp("description")
    (folder / "n.json").write_text(json.dumps(description))
    try:
        read = read_description(folder / "n")
    except CheckpointError as err:
        assert "n.json" in str(err) and "\n" not in str(err)
        return
    assert isinstance(read.arch, str) and type(read.num_classes) is int and read.num_classes >= 1
    assert read.classes is None or len(read.classes) == read.num_classes
