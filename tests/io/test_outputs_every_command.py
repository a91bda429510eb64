"""The output rules hold for ``reaf-zoo --csv`` and the predictions writer too.

``reaf-report`` and ``reaf-analysis`` are tested in ``tests/report`` and ``tests/analysis``.
"""

from __future__ import annotations

import os

import pytest

from reaf_lightning.errors import OutputError
from reaf_lightning.paper.zoo import main as zoo_main
from reaf_lightning.training.predictions import PredictionWriter


def _zoo(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        zoo_main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.parametrize("kind", ["fifo", "link", "device", "directory"])
def test_zoo_csv_only_over_a_regular_file_or_nothing(tmp_path, capsys, kind):
    target = tmp_path / "keep.csv"
    target.write_text("keep\n")
    path = tmp_path / "zoo.csv"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link":
        path.symlink_to(target)
    elif kind == "device":
        path = "/dev/null"
    else:
        path.mkdir()
    code, out, err = _zoo(capsys, "--table", "table4", "--csv", str(path))
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("reaf-zoo: error: output ")
    assert target.read_text() == "keep\n"


def test_zoo_csv_replaces_a_regular_file(tmp_path, capsys):
    path = tmp_path / "zoo.csv"
    path.write_text("old\n")
    code, _, err = _zoo(capsys, "--table", "table4", "--csv", str(path))
    assert code == 0, err
    from reaf_lightning.paper.tables import paper_rows

    lines = path.read_text().splitlines()
    assert len(lines) == 1 + len(paper_rows("table4"))  # a header and one line per row


def test_predictions_are_never_written_through_a_link(tmp_path):
    target = tmp_path / "elsewhere.csv"
    target.write_text("keep\n")
    link = tmp_path / "predictions.csv"
    link.symlink_to(target)
    with pytest.raises(OutputError, match="is a symbolic link"):
        PredictionWriter().write(link, [(0, 0, "a.png", 1, [1], [0.9])])
    assert target.read_text() == "keep\n" and link.is_symlink()


def test_predict_refuses_a_fifo_predictions_file_before_predicting(tmp_path):
    import lightning.pytorch as pl

    from reaf_lightning.data import DigitsDataModule
    from reaf_lightning.training.module import ImageClassifier

    os.mkfifo(tmp_path / "predictions.csv")
    trainer = pl.Trainer(
        callbacks=[PredictionWriter()], logger=False, accelerator="cpu",
        default_root_dir=str(tmp_path), enable_progress_bar=False, limit_predict_batches=1,
    )  # fmt: skip
    module = ImageClassifier(arch="test_resnet", num_classes=10)
    with pytest.raises(OutputError, match=r"predictions.csv is a FIFO"):
        trainer.predict(module, datamodule=DigitsDataModule(image_size=8, batch_size=8))
    assert trainer.predict_loop.batch_progress.total.completed == 0
