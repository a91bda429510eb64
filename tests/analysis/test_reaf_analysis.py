"""End-to-end tests of ``reaf-analysis`` (the Figures 2-4 pipeline) on scikit-learn digits.

One tiny REAF network is trained once per session through Lightning's own
``LightningCLI``, which leaves the run's ``config.yaml`` (the data module's class
and settings) beside ``checkpoints/`` as ``reaf-lightning`` runs do; every test
compares the command's outputs with the library run by hand or with scipy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import REPO
from PIL import Image

from reaf_lightning.analysis.cli import build_parser, main
from reaf_lightning.analysis.hooks import DEFAULT_LAYERS, compute_selectivity
from reaf_lightning.analysis.loading import load_model
from reaf_lightning.analysis.spec import ModelSpec
from reaf_lightning.data import DigitsDataModule
from reaf_lightning.errors import CheckpointError
from reaf_lightning.models import create_model

IMAGE_SIZE = 16
DRAWN = ["layer1", "layer2", "layer3", "layer4"]  # avgpool repeats layer4: drawn once


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A test_reaf_resnet trained for 2 steps via LightningCLI, plus a test_resnet state_dict."""
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.cli import LightningCLI

    from reaf_lightning.runs.writer import MetricsFile
    from reaf_lightning.training.module import ImageClassifier

    root = tmp_path_factory.mktemp("analysis_run")
    args = [
        "fit", "--seed_everything", "0", "--model.arch", "test_reaf_resnet",
        "--model.num_classes", "10", "--model.lr", "0.05",
        "--data.class_path", "reaf_lightning.data.DigitsDataModule",
        "--data.init_args.image_size", str(IMAGE_SIZE), "--data.init_args.batch_size", "64",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(root),
    ]  # fmt: skip
    # MetricsFile: the run record (reaf_run) in the checkpoint says which data the run used
    cli = LightningCLI(ImageClassifier, LightningDataModule, subclass_mode_data=True, args=args,
                       trainer_defaults={"callbacks": [MetricsFile()]})  # fmt: skip
    assert (root / "config.yaml").is_file()
    checkpoint = root / "checkpoints" / "last.ckpt"
    cli.trainer.save_checkpoint(checkpoint)
    torch.manual_seed(1)
    plain = root / "test_resnet.pt"
    torch.save(create_model("test_resnet", num_classes=10).state_dict(), plain)
    return {"reaf": checkpoint, "plain": plain}


def _models(trained: dict[str, Path]) -> list[str]:
    plain = str(trained["plain"])
    return ["--model_a.checkpoint", str(trained["reaf"]),
            "--model_b.arch", "test_resnet", "--model_b.state_dict", plain]  # fmt: skip


def _digits_loader(image_size: int = IMAGE_SIZE, batch_size: int = 64):
    """The validation loader the run's data settings describe (batch size 64)."""
    dm = DigitsDataModule(image_size=image_size, batch_size=batch_size)
    dm.setup("validate")
    return dm.val_dataloader()


def _fails(args: list[str], capsys, code: int = 2) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("reaf-analysis: error: ")
    return err


def test_two_models_data_from_checkpoint_figure_tables(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may appear in the current directory
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main([*_models(trained), "--output_dir", str(out), "--max_batches", "2",
              "--progress", "false"])  # fmt: skip
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(f"selectivity{s}" for s in [".png", ".pdf", ".csv", "_summary.csv",
                           "_seeds.csv", "_difference.csv", "_ks.csv"])  # fmt: skip

    # No --data: the checkpoint's DigitsDataModule at image size 16; labels are the arch names.
    table = pd.read_csv(out / "selectivity.csv", keep_default_na=False)
    assert list(table.columns) == ["layer", "unit", "model", "run", "si"]
    assert list(dict.fromkeys(table.model)) == ["test_reaf_resnet", "test_resnet"]
    # no seed recorded: a network is named by its run directory, or its file
    assert list(dict.fromkeys(table.run)) == [trained["reaf"].parent.parent.name, "test_resnet.pt"]
    nets = {
        "test_reaf_resnet": load_model(ModelSpec(checkpoint=str(trained["reaf"]))).net,
        "test_resnet": create_model("test_resnet", num_classes=10),
    }
    nets["test_resnet"].load_state_dict(torch.load(trained["plain"]))
    summary = pd.read_csv(out / "selectivity_summary.csv")
    for label, net in nets.items():
        expected = compute_selectivity(net, _digits_loader(), num_classes=10, max_batches=2)
        for layer in DEFAULT_LAYERS:
            rows = table[(table.model == label) & (table.layer == layer)].sort_values("unit")
            got = rows.si.to_numpy()
            np.testing.assert_allclose(got, expected[layer].numpy(), rtol=1e-5, atol=1e-6)
        # each network's accuracy on the same images stands next to its selectivity
        hits = total = 0
        for step, (images, labels) in enumerate(_digits_loader()):
            if step == 2:
                break
            with torch.no_grad():
                hits += int((net.eval()(images).argmax(1) == labels).sum())
            total += len(labels)
        assert list(summary[summary.model == label].acc1) == [pytest.approx(hits / total)] * len(
            DEFAULT_LAYERS
        )

    # Summary and KS tables agree with statistics recomputed from the raw CSV.
    from scipy.stats import ks_2samp

    summary = pd.read_csv(out / "selectivity_summary.csv")
    for (layer, label), group in table.groupby(["layer", "model"]):
        row = summary[(summary.layer == layer) & (summary.model == label)].iloc[0]
        assert row.units == len(group)
        assert row["median"] == pytest.approx(group.si.median(), rel=1e-6)
        assert row["frac_si_gt_0.5"] == pytest.approx((group.si > 0.5).mean())
    ks = pd.read_csv(out / "selectivity_ks.csv")
    assert list(ks.columns[:5]) == ["layer", "model_a", "run_a", "model_b", "run_b"]
    statistics = {}
    for layer in DEFAULT_LAYERS:
        part = table[table.layer == layer]
        ref = ks_2samp(
            part[part.model == "test_reaf_resnet"].si, part[part.model == "test_resnet"].si
        )
        statistics[layer] = ref.statistic
        assert ks.set_index("layer").loc[layer, "p_value"] == pytest.approx(ref.pvalue, rel=1e-6)
    best = max(DRAWN, key=statistics.get)
    assert f"Most separated layer (largest KS statistic): {best} " in printed
    assert "within one pair of networks" in printed  # labelled: channels are not replicates
    assert "a model with one network has no spread over seeds, so no interval" in printed
    assert "avgpool has the same values as layer4" in printed
    assert f"Figure panels: {', '.join(DRAWN)}" in printed

    # Print-ready: page width (7.16 in at 300 dpi) and TrueType, not Type 3, fonts in the PDF.
    with Image.open(out / "selectivity.png") as png:
        assert png.width == round(7.16 * 300)
    pdf = (out / "selectivity.pdf").read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType font programs embedded


def test_most_separated_panel_at_column_width(trained, tmp_path, capsys):
    out = tmp_path / "one"
    with pytest.raises(SystemExit):
        main([*_models(trained), "--output_dir", str(out), "--plot_layers", "most_separated",
              "--layers", "[layer1, layer3]", "--stem", "fig", "--max_batches", "2",
              "--progress", "false"])  # fmt: skip
    printed = capsys.readouterr().out
    ks = pd.read_csv(out / "fig_ks.csv")
    best = ks.loc[ks.ks_statistic.idxmax(), "layer"]
    assert f"Figure panels: {best}\n" in printed
    with Image.open(out / "fig.png") as png:
        assert png.width == round(3.5 * 300)


def test_given_data_settings_override_the_run_with_a_note(trained, tmp_path, capsys):
    out = tmp_path / "override"
    args = [*_models(trained)[:2], "--output_dir", str(out), "--layers", "[layer4]",
            "--data.class_path", "reaf_lightning.data.DigitsDataModule",
            "--data.init_args.image_size", "24", "--data.init_args.batch_size", "32",
            "--max_batches", "1", "--progress", "false"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "note: data image_size=24 from the command line; the run used 16" in printed
    assert "image_size: trained 16, evaluated 24" in printed  # what the network is fed, too
    assert "batch_size" not in printed  # how fast it loads is not taken from the run
    net = load_model(ModelSpec(checkpoint=str(trained["reaf"]))).net
    loader = _digits_loader(24, batch_size=32)
    expected = compute_selectivity(net, loader, layers=["layer4"], num_classes=10, max_batches=1)
    got = pd.read_csv(out / "selectivity.csv").sort_values("unit").si.to_numpy()
    np.testing.assert_allclose(got, expected["layer4"].numpy(), rtol=1e-5, atol=1e-6)


def test_bad_checkpoints_fail_before_any_output(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("REAF_DEBUG", raising=False)
    out = tmp_path / "out"
    b = ["--model_b.arch", "test_resnet", "--model_b.state_dict", str(trained["plain"])]
    data = ["--data.class_path", "reaf_lightning.data.DigitsDataModule"]
    common = [*b, *data, "--output_dir", str(out)]

    err = _fails(["--model_a.checkpoint", str(tmp_path / "nope.ckpt"), *common], capsys)
    assert "checkpoint not found" in err and "nope.ckpt" in err
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive" + bytes(range(256)))
    assert "corrupt checkpoint" in _fails(["--model_a.checkpoint", str(corrupt), *common], capsys)
    text = tmp_path / "notes.ckpt"
    text.write_text("epoch 3, loss 0.1\n")
    err = _fails(["--model_a.checkpoint", str(text), *common], capsys)
    assert "not a PyTorch checkpoint" in err
    # a test_resnet state_dict is not a test_reaf_resnet
    err = _fails(["--model_a.arch", "test_reaf_resnet", "--model_a.state_dict",
                  str(trained["plain"]), *common], capsys)  # fmt: skip
    assert "incompatible checkpoint" in err and "test_reaf_resnet" in err
    err = _fails(["--model_a.checkpoint", str(trained["plain"]), *common], capsys)
    assert "not a Lightning checkpoint" in err
    err = _fails([*_models(trained), "--layers", "[layer1, relu9]", "--output_dir", str(out)],
                 capsys)  # fmt: skip
    assert "unknown layer 'relu9'" in err and "layer4" in err
    err = _fails(["--model_a.arch", "test_resnet", "--model_a.state_dict", str(trained["plain"]),
                  "--output_dir", str(out)], capsys)  # fmt: skip
    assert "give --data.class_path" in err
    assert list(out.iterdir()) == []  # nothing written by any failed run

    # the output location is checked before anything is loaded or computed
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = _fails([*_models(trained), "--output_dir", str(blocker / "sub")], capsys)
    assert str(blocker / "sub") in err


class Payload:
    """Pickled into a checkpoint: unpickling it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_unsafe_checkpoint_refused_unless_weights_only_false(trained, tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    content = torch.load(trained["reaf"], weights_only=True)
    content["extra"] = Payload(marker)
    crafted = tmp_path / "crafted.ckpt"
    torch.save(content, crafted)
    out = tmp_path / "out"
    args = ["--model_a.checkpoint", str(crafted), "--output_dir", str(out), "--layers", "[layer1]",
            "--max_batches", "1", "--progress", "false"]  # fmt: skip
    err = _fails(args, capsys)
    assert "refused by the safe loader" in err and "--weights_only false" in err
    assert not marker.exists()
    with pytest.raises(SystemExit) as exc:
        main([*args, "--weights_only", "false"])  # the explicit flag: the user trusts the file
    assert exc.value.code == 0 and marker.exists()


def test_non_finite_weights_and_activations_exit_3(trained, tmp_path, capsys):
    sd = torch.load(trained["plain"])
    broken = dict(sd, **{"layer2.0.conv1.weight": torch.full_like(sd["layer2.0.conv1.weight"],
                                                                  float("nan"))})  # fmt: skip
    torch.save(broken, tmp_path / "nan.pt")
    data = ["--data.class_path", "reaf_lightning.data.DigitsDataModule", "--max_batches", "1",
            "--progress", "false"]  # fmt: skip
    args = ["--model_a.arch", "test_resnet", "--model_a.label", "broken", *data,
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    err = _fails([*args, "--model_a.state_dict", str(tmp_path / "nan.pt")], capsys, code=3)
    assert "'broken'" in err and "layer2.0.conv1.weight" in err
    # finite weights, but a negative BatchNorm variance makes layer1's activations NaN
    broken = dict(
        sd, **{"layer1.0.bn1.running_var": -torch.ones_like(sd["layer1.0.bn1.running_var"])}
    )
    torch.save(broken, tmp_path / "bn.pt")
    err = _fails([*args, "--model_a.state_dict", str(tmp_path / "bn.pt")], capsys, code=3)
    assert "'broken'" in err and "layer 'layer1'" in err and "non-finite activations" in err
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_wandb_without_credentials_logs_offline_into_output_dir(
    trained, tmp_path, monkeypatch, capsys
):
    from helpers.wandb_records import run_contents

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main([*_models(trained), "--output_dir", str(out), "--max_batches", "1",
              "--wandb_project", "reaf-test", "--progress", "false"])  # fmt: skip
    assert exc.value.code == 0
    assert f"W&B run saved offline under {out / 'wandb'}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no ./wandb
    import wandb

    wandb.teardown()  # the command's process would exit here: W&B's service finishes the file
    (run_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    contents = run_contents(run_file)
    assert "models" in contents["config"], list(contents["config"])
    models = contents["config"]["models"]  # {model: {run: what was loaded}}
    (reaf,) = models["test_reaf_resnet"].values()
    assert reaf["source"] == str(trained["reaf"].resolve())
    assert models["test_resnet"]["test_resnet.pt"]["source"] == str(trained["plain"].resolve())
    (row,) = [r for r in contents["history"] if "selectivity/figure/_type" in r]
    assert row["selectivity/summary/nrows"] == 2 * len(DEFAULT_LAYERS)
    (table,) = run_file.parent.glob("files/media/table/selectivity/summary_*.table.json")
    summary = pd.read_csv(out / "selectivity_summary.csv")
    assert json.loads(table.read_text())["columns"] == list(summary.columns)


def test_help_and_argument_errors_import_no_torch():
    code = (
        "import sys\nfrom reaf_lightning.analysis.cli import main\n"
        "for args in (['--help'], ['--reduction', 'max', '--output_dir', 'x']):\n"
        "    try:\n        main(args)\n    except SystemExit as e:\n        print('exit', e.code)\n"
        "print('heavy', sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, check=True)  # fmt: skip
    assert "exit 0" in result.stdout and "exit 2" in result.stdout
    assert "heavy []" in result.stdout
    assert 'reaf-analysis: error: Parser key "reduction"' in result.stderr


@pytest.mark.parametrize("name", ["figure2", "figure3", "figure4", "figure4_torchvision"])
def test_paper_figure_configs_parse(name):
    cfg, figure2 = (
        build_parser().parse_args(["--config", str(REPO / "configs" / "analysis" / f"{n}.yaml")])
        for n in (name, "figure2")
    )
    assert cfg.data.class_path == "reaf_lightning.data.ImageNetDataModule"
    assert cfg.model_a.label and cfg.model_b.label and cfg.plot_layers == "most_separated"
    if name == "figure4_torchvision":  # the labelled alternative: torchvision's weights
        assert (cfg.model_a.arch, cfg.model_b.arch) == ("resnet50", "resnext50_32x4d")
    elif name == "figure4":  # the paper's pair: Figure 2's ResNet50, Table 6's ResNeXt50
        assert cfg.model_a.checkpoint == figure2.model_a.checkpoint
        assert "table6/imagenet_resnext50_g4_all/" in cfg.model_b.checkpoint
    elif name == "figure2":  # the paper's headline REAF-ResNet50: C = 72, 4-3-4 (Table 1)
        assert "resnet50/" in cfg.model_a.checkpoint
        assert "reaf_resnet50_c72_4-3-4/" in cfg.model_b.checkpoint
    else:
        assert "resnet101/" in cfg.model_a.checkpoint
        assert "reaf_resnet101_c72_4-3-4/" in cfg.model_b.checkpoint


def test_torchvision_weights_from_local_hub_cache(tmp_path, monkeypatch):
    """Registry resnet18 loads torchvision's weight file and computes the same function."""
    import torchvision

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        spec = ModelSpec(arch="resnet18", weights="IMAGENET1K_V1")
        with pytest.raises(CheckpointError, match="not available locally"):
            load_model(spec)
        with pytest.raises(ValueError, match="unknown torchvision weights 'V9'"):
            load_model(ModelSpec(arch="resnet18", weights="V9"))
        torch.manual_seed(0)
        reference = torchvision.models.resnet18().eval()
        url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / Path(url).name)
        ours = load_model(spec)
        assert ours.label == "resnet18 (IMAGENET1K_V1)"
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(ours.net(x), reference(x))
    finally:
        torch.hub.set_dir(old)


def test_reaf_analysis_parse_errors_are_one_line(tmp_path, capsys):
    from reaf_lightning.analysis.cli import main as analysis_main
    from reaf_lightning.models import create_model

    torch.save(create_model("test_resnet", num_classes=10).state_dict(), tmp_path / "a.pt")
    base = [
        "--model_a.arch",
        "test_resnet",
        "--model_a.state_dict",
        str(tmp_path / "a.pt"),
        "--data.class_path",
        "reaf_lightning.data.DigitsDataModule",
    ]
    base.extend(["--output_dir", str(tmp_path / "out")])
    # jsonargparse's own message, collapsed to one line (never reworded)
    for extra, expected in [
        (["--max_batches", "many"], 'Parser key "max_batches":'),
        (["--reduction", "max"], 'Parser key "reduction": Expected a typing.Literal'),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            analysis_main([*base, *extra])
        assert exc.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"reaf-analysis: error: {expected}")
    # a data module's own message, not jsonargparse's wrapper (a user error: exit 2)
    with pytest.raises(SystemExit) as exc:
        analysis_main([*base, "--data.init_args.batch_size", "0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "reaf-analysis: error: batch_size must be an integer >= 1, got 0"
    ]
