"""``reaf-analysis`` takes names from a run's files, never behaviour, and measures what the
network was trained on.

Crafted copies of the suite's ``trained_run`` checkpoint (a real quick-start ``fit`` of a
tiny REAF network on the digits at 16 px) record data settings that must not act: a
cache file to replace, a download into a folder of the file's choosing. Every expected
value is computed by the library run by hand with the settings the docs say are reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.fake_data import write_image_folder

from reaf_lightning.analysis.cli import main
from reaf_lightning.analysis.hooks import compute_selectivity
from reaf_lightning.analysis.loading import load_model
from reaf_lightning.analysis.spec import ModelSpec
from reaf_lightning.data import ImageFolderDataModule
from reaf_lightning.models import create_model

FAST = ["--max_batches", "1", "--progress", "false", "--layers", "[layer4]"]
FOLDER = ["--data.class_path", "reaf_lightning.data.ImageFolderDataModule"]


def _run(capsys, args: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _crafted(trained_run: Path, tmp_path: Path, data: dict) -> Path:
    """The run's last checkpoint with its record's data replaced by ``data``."""
    content = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    content["reaf_run"]["data"] = data
    path = tmp_path / "crafted.ckpt"
    torch.save(content, path)
    return path


def _fed(trained_run: Path) -> dict:
    """What the run's network was fed, as its metrics.json records it."""
    return json.loads((trained_run / "metrics.json").read_text())["data"]


def _si(out: Path) -> np.ndarray:
    return pd.read_csv(out / "selectivity.csv").sort_values("unit").si.to_numpy()


def test_the_record_holds_what_the_network_was_fed(trained_run):
    """The digits' mean and std are computed from the training images, not init settings:
    the record holds the values the set-up module had (recomputed here independently)."""
    from reaf_lightning.data import DigitsDataModule

    fed = _fed(trained_run)
    reference = DigitsDataModule(**fed["init_args"])
    assert fed["image_size"] == reference.image_size == fed["init_args"]["image_size"]
    assert fed["mean"] == pytest.approx(list(reference.mean), rel=1e-7)
    assert fed["std"] == pytest.approx(list(reference.std), rel=1e-7)
    assert (fed["num_classes"], fed["classes"]) == (10, [str(i) for i in range(10)])


def test_a_files_paths_cache_and_workers_never_act(trained_run, tmp_path, capsys, monkeypatch):
    """A record naming an image folder with its own root and verify_cache: the cache file it
    names is left alone, its root is named in a note but not read; image size and
    normalisation are the run's, for the folder the user names."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where verify_cache "auto" writes
    folder = tmp_path / "folder"
    write_image_folder(folder, classes=[str(i) for i in range(10)], n_per_class=2, size=24)
    victim = tmp_path / "victim.json"
    victim.write_text("precious\n")
    fed = _fed(trained_run)
    theirs = tmp_path / "theirs"
    data = {
        "class_path": "reaf_lightning.data.ImageFolderDataModule",
        "init_args": {"root": str(theirs), "verify_cache": str(victim), "num_workers": 64,
                      "image_size": 99, "on_corrupt": "error"},
        "image_size": fed["image_size"], "mean": fed["mean"], "std": fed["std"],
    }  # fmt: skip
    crafted = _crafted(trained_run, tmp_path, data)
    out = tmp_path / "out"
    code, printed, err = _run(capsys, ["--model_a.checkpoint", str(crafted), *FOLDER,
                                       "--data.init_args.root", str(folder),
                                       "--output_dir", str(out), *FAST])  # fmt: skip
    assert code == 0, err
    assert victim.read_text() == "precious\n" and not theirs.exists()
    assert list((tmp_path / "home" / ".cache" / "reaf_lightning").glob("verified-*.json"))
    assert (
        f"note: the run read its data from '{theirs}'; this analysis reads '{folder}' (a path "
        "is never taken from a file: give --data.init_args.root)"
    ) in printed
    assert "evaluated" not in printed  # fed as trained: no difference to note
    net = load_model(ModelSpec(checkpoint=str(crafted))).net
    reference = ImageFolderDataModule(
        root=str(folder), image_size=fed["image_size"], mean=fed["mean"], std=fed["std"],
        verify_cache=None, num_workers=0,
    )  # fmt: skip
    reference.setup("validate")
    si = compute_selectivity(net, reference.val_dataloader(), layers=["layer4"], max_batches=1)
    np.testing.assert_allclose(_si(out), si["layer4"].numpy(), rtol=1e-5, atol=1e-6)


def test_a_files_download_never_starts(trained_run, tmp_path, capsys, monkeypatch):
    """``download: true`` with a root of the file's choosing: the user's (default) root is
    read, nothing is fetched and the file's folder is never created."""
    monkeypatch.chdir(tmp_path)
    theirs = tmp_path / "elsewhere" / "cifar"
    data = {"class_path": "reaf_lightning.data.CIFAR10DataModule",
            "init_args": {"root": str(theirs), "download": True}}  # fmt: skip
    crafted = _crafted(trained_run, tmp_path, data)
    code, _, err = _run(capsys, ["--model_a.checkpoint", str(crafted), "--output_dir", "out",
                                 *FAST])  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    assert "data/cifar10" in err and str(theirs) not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.ckpt", "out"]
    assert not any((tmp_path / "out").iterdir())


def test_image_size_and_normalisation_are_the_runs_whatever_class_and_every_difference_is_said(
    trained_run, tmp_path, capsys
):
    """The digits run (16 px, the digits' statistics) analysed on an image folder of 3
    classes: ImageFolderDataModule's defaults (224 px, ImageNet's statistics) are not used,
    and the one difference left, the classes, is printed."""
    folder = tmp_path / "folder"
    write_image_folder(folder, n_per_class=4, size=24)
    out = tmp_path / "out"
    code, printed, err = _run(capsys, ["--model_a.checkpoint", str(trained_run), *FOLDER,
                                       "--data.init_args.root", str(folder),
                                       "--data.init_args.verify_cache", "null",
                                       "--output_dir", str(out), *FAST])  # fmt: skip
    assert code == 0, err
    notes = [line for line in printed.splitlines() if "note:" in line]
    assert notes == ["[reaf-analysis] note: test_reaf_resnet seed0: num_classes: trained 10, "
                     "evaluated 3"]  # fmt: skip
    fed = _fed(trained_run)
    net = load_model(ModelSpec(checkpoint=str(trained_run))).net
    reference = ImageFolderDataModule(
        root=str(folder), image_size=fed["image_size"], mean=fed["mean"], std=fed["std"],
        verify_cache=None,
    )  # fmt: skip
    reference.setup("validate")
    si = compute_selectivity(net, reference.val_dataloader(), layers=["layer4"], max_batches=1)
    np.testing.assert_allclose(_si(out), si["layer4"].numpy(), rtol=1e-5, atol=1e-6)
    # 10 outputs for 3 classes: no accuracy to give
    assert pd.read_csv(out / "selectivity_summary.csv").acc1.isna().all()


def test_a_state_dict_model_a_takes_the_datas_classes_like_model_b(tmp_path, capsys):
    folder = tmp_path / "folder"
    write_image_folder(folder, n_per_class=4, size=16)
    torch.manual_seed(0)
    net = create_model("test_resnet", num_classes=3).eval()  # its default would be 10
    torch.save(net.state_dict(), tmp_path / "three.pt")
    out = tmp_path / "out"
    code, _, err = _run(capsys, ["--model_a.arch", "test_resnet", "--model_a.state_dict",
                                 str(tmp_path / "three.pt"), *FOLDER,
                                 "--data.init_args.root", str(folder),
                                 "--data.init_args.image_size", "16",
                                 "--data.init_args.verify_cache", "null",
                                 "--output_dir", str(out), *FAST])  # fmt: skip
    assert code == 0, err
    data = ImageFolderDataModule(root=str(folder), image_size=16, verify_cache=None)
    data.setup("validate")
    si = compute_selectivity(net, data.val_dataloader(), layers=["layer4"], max_batches=1)
    np.testing.assert_allclose(_si(out), si["layer4"].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"class_path": "reaf_lightning.data.DigitsDataModule", "image_size": 100_000},
         "data.image_size: Value error, an image side is an integer in [1, 4096]"),
        ({"class_path": "reaf_lightning.data.DigitsDataModule",
          "init_args": {"image_size": 100_000}},
         "data image_size: an image side is an integer in [1, 4096], got 100000"),
        ({"class_path": "reaf_lightning.data.DigitsDataModule", "std": [0.2, 0.0, 0.2]},
         "data.std: Value error, must be > 0"),
    ],
)  # fmt: skip
def test_a_recorded_value_out_of_range_is_one_line_before_any_work(
    trained_run, tmp_path, capsys, data, message
):
    crafted = _crafted(trained_run, tmp_path, data)
    out = tmp_path / "out"
    code, _, err = _run(capsys, ["--model_a.checkpoint", str(crafted), "--output_dir", str(out),
                                 *FAST])  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert "crafted.ckpt" in err and not any(out.iterdir())
