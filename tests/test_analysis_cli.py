"""End-to-end tests of ``reaf-analysis`` (Figures 2-4 pipeline) on scikit-learn digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from analysis.atomic import atomic_outputs
from analysis.cli import build_parser, main
from analysis.loading import ModelLoadError, ModelSpec, load_model
from analysis.selectivity import DEFAULT_LAYERS, compute_selectivity
from reaf_lightning.data import DigitsDataModule
from reaf_lightning.models import create_model

REPO = Path(__file__).resolve().parents[1]
DATA = [
    "--data.class_path",
    "reaf_lightning.data.DigitsDataModule",
    "--data.init_args.image_size",
    "16",
    "--data.init_args.batch_size",
    "128",
]
OUTPUTS = ["selectivity.png", "selectivity.pdf", "selectivity.csv", "selectivity_summary.csv"]


@pytest.fixture(scope="module")
def state_dicts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    paths = {}
    for seed, arch in enumerate(["test_resnet", "test_reaf_resnet"]):
        torch.manual_seed(seed)
        paths[arch] = root / f"{arch}.pt"
        torch.save(create_model(arch, num_classes=10).state_dict(), paths[arch])
    return paths


def _two_models(sd: dict[str, Path]) -> list[str]:
    return [
        "--model_a.arch", "test_resnet", "--model_a.state_dict", str(sd["test_resnet"]),
        "--model_a.label", "plain",
        "--model_b.arch", "test_reaf_resnet", "--model_b.state_dict", str(sd["test_reaf_resnet"]),
        "--model_b.label", "REAF",
    ]  # fmt: skip


def _digits_loader():
    dm = DigitsDataModule(image_size=16, batch_size=128)
    dm.setup("validate")
    return dm.val_dataloader()


def test_cli_two_models_writes_figure_tables_and_matches_library(state_dicts, tmp_path, capsys):
    out = tmp_path / "out"
    main([*_two_models(state_dicts), *DATA, "--output_dir", str(out), "--progress", "false"])
    printed = capsys.readouterr().out
    assert "Kolmogorov-Smirnov" in printed and "frac_si_gt_0.5" in printed

    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([*OUTPUTS, "selectivity_ks.csv"])  # no temporaries left behind
    with Image.open(out / "selectivity.png") as png:
        assert png.format == "PNG" and png.width > 3 * png.height  # one row of 5 panels
    assert (out / "selectivity.pdf").read_bytes().startswith(b"%PDF")

    # The CSV holds exactly what the library computes for the same models and data.
    table = pd.read_csv(out / "selectivity.csv")
    assert list(table.columns) == ["layer", "unit", "model", "si"]
    for label, arch in [("plain", "test_resnet"), ("REAF", "test_reaf_resnet")]:
        model = create_model(arch, num_classes=10)
        model.load_state_dict(torch.load(state_dicts[arch]))
        expected = compute_selectivity(model, _digits_loader(), num_classes=10)
        for layer in DEFAULT_LAYERS:
            rows = table[(table.model == label) & (table.layer == layer)].sort_values("unit")
            np.testing.assert_allclose(rows.si.to_numpy(), expected[layer].numpy(), rtol=1e-6)

    # Summary and KS tables agree with statistics recomputed from the raw CSV.
    summary = pd.read_csv(out / "selectivity_summary.csv")
    for (layer, label), group in table.groupby(["layer", "model"]):
        row = summary[(summary.layer == layer) & (summary.model == label)].iloc[0]
        assert row.units == len(group)
        assert row["mean"] == pytest.approx(group.si.mean(), rel=1e-6)
        assert row["median"] == pytest.approx(group.si.median(), rel=1e-6)
        assert row["frac_si_gt_0.5"] == pytest.approx((group.si > 0.5).mean())
    ks = pd.read_csv(out / "selectivity_ks.csv")
    assert list(ks.layer) == list(DEFAULT_LAYERS)
    from scipy.stats import ks_2samp

    layer1 = table[table.layer == "layer1"]
    ref = ks_2samp(layer1[layer1.model == "plain"].si, layer1[layer1.model == "REAF"].si)
    assert ks.loc[0, "p_value"] == pytest.approx(ref.pvalue, rel=1e-6)


def _lightning_checkpoint(path: Path) -> Path:
    """A real ImageClassifier checkpoint after one optimisation step on digits."""
    import lightning.pytorch as pl

    from reaf_lightning.module import ImageClassifier

    torch.manual_seed(0)
    module = ImageClassifier(arch="test_reaf_resnet", num_classes=10, lr=0.05)
    dm = DigitsDataModule(image_size=16, batch_size=32)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(path)
    return path


def test_cli_single_lightning_checkpoint_and_config_composition(tmp_path):
    ckpt = _lightning_checkpoint(tmp_path / "reaf.ckpt")
    config = tmp_path / "analysis.yaml"
    config.write_text(
        "model_a:\n"
        f"  checkpoint: {ckpt}\n"
        "data:\n"
        "  class_path: reaf_lightning.data.DigitsDataModule\n"
        "  init_args: {image_size: 16, batch_size: 128}\n"
        "layers: [layer1, avgpool]\n"
        "output_dir: never_used\n"
    )
    out = tmp_path / "flag_wins"
    main(["--config", str(config), "--output_dir", str(out), "--stem", "one"])
    assert sorted(p.name for p in out.iterdir()) == ["one.csv", "one.pdf", "one.png",
                                                     "one_summary.csv"]  # fmt: skip
    table = pd.read_csv(out / "one.csv")
    assert set(table.model) == {"reaf"} and set(table.layer) == {"layer1", "avgpool"}
    # Same numbers as loading the checkpoint by hand.
    from reaf_lightning.module import ImageClassifier

    net = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu").net
    expected = compute_selectivity(net, _digits_loader(), layers=["avgpool"], num_classes=10)
    np.testing.assert_allclose(
        table[table.layer == "avgpool"].sort_values("unit").si, expected["avgpool"], rtol=1e-6
    )
    # The checkpoint's state_dict also loads as arch + state_dict (prefix stripped).
    same = load_model(ModelSpec(arch="test_reaf_resnet", state_dict=str(ckpt)), num_classes=10)
    for (k, v), w in zip(net.state_dict().items(), same.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def _fails(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_missing_corrupt_and_incompatible_checkpoints(state_dicts, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("REAF_DEBUG", raising=False)
    out = tmp_path / "out"
    good = ["--model_b.arch", "test_resnet", "--model_b.label", "other",
            "--model_b.state_dict", str(state_dicts["test_resnet"])]  # fmt: skip
    common = [*good, *DATA, "--output_dir", str(out)]

    err = _fails(["--model_a.checkpoint", str(tmp_path / "nope.ckpt"), *common], capsys)
    assert "checkpoint not found" in err and "nope.ckpt" in err

    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive" + bytes(range(256)))
    err = _fails(["--model_a.checkpoint", str(corrupt), *common], capsys)
    assert "corrupt checkpoint" in err and "corrupt.ckpt" in err

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(state_dicts["test_resnet"].read_bytes()[:5000])
    err = _fails(["--model_a.arch", "test_resnet", "--model_a.state_dict", str(truncated),
                  *common], capsys)  # fmt: skip
    assert "corrupt checkpoint" in err

    # A test_resnet state_dict is not a test_reaf_resnet.
    err = _fails(["--model_a.arch", "test_reaf_resnet", "--model_a.state_dict",
                  str(state_dicts["test_resnet"]), *common], capsys)  # fmt: skip
    assert "incompatible checkpoint" in err and "test_reaf_resnet" in err

    # A bare state_dict passed where a Lightning checkpoint is expected.
    err = _fails(["--model_a.checkpoint", str(state_dicts["test_resnet"]), *common], capsys)
    assert "incompatible checkpoint" in err and "not a Lightning checkpoint" in err

    err = _fails([*_two_models(state_dicts), *DATA, "--layers", "[layer1, relu9]",
                  "--output_dir", str(out)], capsys)  # fmt: skip
    assert "unknown layer 'relu9'" in err and "layer4" in err

    assert not out.exists()  # nothing written by any failed run

    monkeypatch.setenv("REAF_DEBUG", "1")
    with pytest.raises(ModelLoadError, match="checkpoint not found"):
        main(["--model_a.checkpoint", str(tmp_path / "nope.ckpt"), *common])


def test_torchvision_weights_from_local_hub_cache(tmp_path, monkeypatch):
    """Registry resnet18 loads torchvision's weight file and computes the same function."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        spec = ModelSpec(arch="resnet18", weights="IMAGENET1K_V1")
        with pytest.raises(ModelLoadError, match="not available locally"):
            load_model(spec)
        with pytest.raises(ModelLoadError, match="unknown torchvision weights 'V9'"):
            load_model(ModelSpec(arch="resnet18", weights="V9"))
        torch.manual_seed(0)
        reference = torchvision.models.resnet18().eval()
        url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / Path(url).name)
        ours = load_model(spec)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), reference(x))
    finally:
        torch.hub.set_dir(str(Path(torch.hub._get_torch_home()) / "hub"))


def test_atomic_outputs_leave_nothing_on_failure(tmp_path):
    final = [tmp_path / "a.png", tmp_path / "b.csv"]
    final[1].write_text("old result")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_outputs(final) as temps:
            temps[0].write_bytes(b"half a figure")
            raise RuntimeError("crash while writing the second file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.csv"]
    assert final[1].read_text() == "old result"  # the previous result is untouched
    with atomic_outputs(final) as temps:
        temps[0].write_bytes(b"png")
        temps[1].write_text("new")
    assert final[1].read_text() == "new" and final[0].read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.csv"]


@pytest.mark.parametrize("name", ["figure2", "figure3", "figure4"])
def test_paper_figure_configs_parse(name):
    cfg = build_parser().parse_args(
        ["--config", str(REPO / "configs" / "analysis" / f"{name}.yaml")]
    )
    assert cfg.data.class_path == "reaf_lightning.data.ImageNetDataModule"
    assert cfg.layers == list(DEFAULT_LAYERS) and cfg.reduction == "mean"
    assert cfg.model_a.label and cfg.model_b.label
    if name == "figure4":
        assert (cfg.model_a.arch, cfg.model_b.arch) == ("resnet50", "resnext50_32x4d")
    else:
        depth = "50" if name == "figure2" else "101"
        assert f"resnet{depth}/" in cfg.model_a.checkpoint
        assert f"reaf_resnet{depth}_" in cfg.model_b.checkpoint


def test_wandb_offline_run_receives_figure_and_tables(state_dicts, tmp_path, monkeypatch):
    from wandb_records import run_contents

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    main([*_two_models(state_dicts), *DATA, "--output_dir", str(out), "--max_batches", "1",
          "--wandb_project", "reaf-test", "--progress", "false"])  # fmt: skip
    run_files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    (row,) = [r for r in run_contents(run_files[0])["history"] if "selectivity/figure/_type" in r]
    assert row["selectivity/figure/_type"] == "image-file"
    assert row["selectivity/summary/_type"] == "table-file"
    assert row["selectivity/summary/nrows"] == 2 * len(DEFAULT_LAYERS)  # layers x models
    assert row["selectivity/ks/nrows"] == len(DEFAULT_LAYERS)
    (png,) = run_files[0].parent.glob("files/media/images/selectivity/figure_*.png")
    with Image.open(png) as image:
        assert image.format == "PNG"
    (table,) = run_files[0].parent.glob("files/media/table/selectivity/summary_*.table.json")
    logged = json.loads(table.read_text())
    summary = pd.read_csv(out / "selectivity_summary.csv")
    assert logged["columns"] == list(summary.columns)
    np.testing.assert_allclose([r[3] for r in logged["data"]], summary["mean"], rtol=1e-6)


def test_paper_config_without_checkpoints_fails_cleanly(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("REAF_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)  # no logs/ and no data/imagenet here
    config = str(REPO / "configs" / "analysis" / "figure2.yaml")
    err = _fails(["--config", config, "--output_dir", str(tmp_path / "out")], capsys)
    assert err.startswith("reaf-analysis: error:") and "data/imagenet" in err
    assert not (tmp_path / "out").exists()
