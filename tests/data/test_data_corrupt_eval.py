"""Evaluation with corrupt files (``on_corrupt="skip"``, the default): every predictions.csv row
and every validated image is one real image, through a real Trainer.

The reference is independent of the data module: the files are listed with ``os.walk``,
decoded with plain PIL (a file PIL cannot fully load is not an image), transformed by hand
(32-pixel images: no resize or crop, then ``(x / 255 - mean) / std``) and passed through the
network one at a time.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers.fake_data import folder_datamodule, write_corrupt_image, write_image_folder
from PIL import Image

from reaf_lightning import ImageClassifier
from reaf_lightning.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CorruptImageError,
    CorruptImageWarning,
)
from reaf_lightning.training.predictions import PredictionWriter

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 10  # the network's outputs; the folder has 3 classes


def _folder_with_corrupt_val(root: Path) -> list[Path]:
    """3 classes x 3 images of 32 px per split, plus three broken validation files."""
    write_image_folder(root, classes=("cat", "dog", "emu"), n_per_class=3, size=32)
    truncated = root / "val" / "dog" / "dog_7.jpg"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-300])  # passes PIL's verify(), not a decode
    garbage = write_corrupt_image(root / "val" / "cat" / "cat_1a.png")
    empty = write_corrupt_image(root / "val" / "emu" / "emu_0.jpeg", b"")
    return [truncated, garbage, empty]


def _reference(root: Path, model: ImageClassifier) -> dict[str, tuple[int, torch.Tensor]]:
    """``{path: (label, softmax)}`` for every decodable file under ``root/val``."""
    classes = sorted(os.listdir(root / "val"))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = {}
    for label, name in enumerate(classes):
        for folder, _, files in os.walk(root / "val" / name):
            for file in files:
                path = os.path.join(folder, file)
                try:
                    with Image.open(path) as image:
                        rgb = np.asarray(image.convert("RGB"))
                except OSError:
                    continue
                x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255
                with torch.no_grad():
                    probs = model(((x - mean) / std)[None]).softmax(-1)[0]
                out[path] = (label, probs)
    return out


def _trainer(root: Path, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", default_root_dir=str(root), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )  # fmt: skip


@pytest.fixture()
def model() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier("test_resnet", num_classes=NUM_CLASSES).eval()


def test_predictions_rows_belong_to_one_decodable_image_each(tmp_path, model):
    broken = _folder_with_corrupt_val(tmp_path / "data")
    with Image.open(broken[0]) as image:
        image.verify()  # the truncated JPEG looks fine to a cheap check
    dm = folder_datamodule(tmp_path / "data", batch_size=4)
    with pytest.warns(CorruptImageWarning, match=r"left out 3 undecodable image\(s\) of 12"):
        _trainer(tmp_path / "run", callbacks=[PredictionWriter(top_k=3)]).predict(
            model, datamodule=dm, return_predictions=False
        )
    assert set(dm.left_out) == {str(p) for p in broken}
    with open(tmp_path / "run" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = _reference(tmp_path / "data", model)
    assert sorted(row["path"] for row in rows) == sorted(expected)  # each file once, no broken
    assert [int(row["index"]) for row in rows] == list(range(len(rows)))
    for row in rows:
        label, probs = expected[row["path"]]
        assert int(row["target"]) == label, row["path"]
        top = probs.topk(3)
        assert [int(row[f"top{r}_class"]) for r in (1, 2, 3)] == top.indices.tolist()
        got = [float(row[f"top{r}_prob"]) for r in (1, 2, 3)]
        assert got == pytest.approx(top.values.tolist(), rel=1e-5), row["path"]


def test_validation_counts_each_decodable_image_once(tmp_path, model):
    _folder_with_corrupt_val(tmp_path / "data")
    expected = _reference(tmp_path / "data", model)
    labels = torch.tensor([label for label, _ in expected.values()])
    probs = torch.stack([p for _, p in expected.values()])
    acc1 = (probs.argmax(-1) == labels).float().mean().item()
    loss = torch.nn.functional.nll_loss(probs.log(), labels).item()
    dm = folder_datamodule(tmp_path / "data", batch_size=4)  # 9 images: batches of 4, 4, 1
    with pytest.warns(CorruptImageWarning):
        (metrics,) = _trainer(tmp_path / "run").validate(model, datamodule=dm, verbose=False)
    assert metrics["val/acc1"] == pytest.approx(acc1, abs=1e-6)
    assert metrics["val/loss"] == pytest.approx(loss, rel=1e-5)
    # The same with the test loop: the test split is the checked evaluation split.
    dm = folder_datamodule(tmp_path / "data", batch_size=4)
    with pytest.warns(CorruptImageWarning):
        (metrics,) = _trainer(tmp_path / "run").test(model, datamodule=dm, verbose=False)
    assert metrics["test/loss"] == pytest.approx(loss, rel=1e-5)


def test_a_file_broken_after_the_check_is_an_error_not_a_stand_in(tmp_path, model):
    _folder_with_corrupt_val(tmp_path / "data")
    dm = folder_datamodule(tmp_path / "data", batch_size=4)
    with pytest.warns(CorruptImageWarning):
        dm.setup("validate")
    victim = dm.val_dataset.samples[2][0]
    write_corrupt_image(victim)
    with pytest.raises(CorruptImageError, match=Path(victim).name):
        dm.val_dataset[2]


def test_checking_the_val_split_keeps_the_cached_verdicts_of_training_files(tmp_path):
    write_image_folder(tmp_path / "data", classes=("a", "b"), n_per_class=2, size=16)
    cache = tmp_path / "cache.json"
    folder_datamodule(tmp_path / "data", on_corrupt="error", verify_cache=str(cache)).setup("fit")
    before = cache.read_text()
    folder_datamodule(tmp_path / "data", verify_cache=str(cache)).setup("fit")  # val only
    assert cache.read_text() == before  # all 8 verdicts still there
