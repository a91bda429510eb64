"""``predictions.csv`` (reaf_lightning/predictions.py): rows, paths, order, DDP, failures.

The reference is a plain loop: the network's softmax over each input, its
``topk``, and the file path taken from the dataset's ``samples`` list by hand.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from reaf_lightning import ImageClassifier
from reaf_lightning.errors import OutputError
from reaf_lightning.training.predictions import PredictionWriter

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 10


class FileImages(Dataset):
    """Random images that claim to come from files, listed torchvision-style in ``samples``."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 8, 8, generator=g)
        self.samples = [(f"/data/img_{i:03d}.png", i % NUM_CLASSES) for i in range(n)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.samples[index][1]


def _model() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier("test_resnet", num_classes=NUM_CLASSES).eval()


def _expected(model: ImageClassifier, dataset: Subset, k: int) -> list[dict[str, str]]:
    """The rows a correct writer produces, computed input by input."""
    rows = []
    with torch.no_grad():
        for i in range(len(dataset)):
            image, label = dataset[i]
            probs = model(image[None]).softmax(dim=-1)[0]
            order = sorted(range(NUM_CLASSES), key=lambda c: -probs[c].item())[:k]
            row = {"index": str(i), "path": f"/data/img_{dataset.indices[i]:03d}.png"}
            row["target"] = str(label)
            for rank, c in enumerate(order, start=1):
                row[f"top{rank}_class"], row[f"top{rank}_prob"] = str(c), probs[c].item()
            rows.append(row)
    return rows


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_rows(got: list[dict[str, str]], expected: list[dict[str, str]]) -> None:
    assert len(got) == len(expected)
    for row, ref in zip(got, expected):
        for key, value in ref.items():
            if key.endswith("_prob"):
                assert float(row[key]) == pytest.approx(value, rel=1e-5), key
            else:
                assert row[key] == value, key


def _trainer(root: Path, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        default_root_dir=str(root),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_predictions_file_lists_topk_with_paths_in_dataset_order(tmp_path):
    # A Subset (a shuffled selection of 7 files) read in batches of 3: 3 + 3 + 1.
    dataset = Subset(FileImages(12), [9, 2, 7, 0, 11, 4, 5])
    model = _model()
    writer = PredictionWriter(top_k=3)
    _trainer(tmp_path / "run", callbacks=[writer]).predict(
        model, DataLoader(dataset, batch_size=3), return_predictions=False
    )
    path = tmp_path / "run" / "predictions.csv"
    header = path.read_text().splitlines()[0].split(",")
    assert header == [
        "index",
        "path",
        "target",
        *[f"top{r}_{what}" for r in (1, 2, 3) for what in ("class", "prob")],
    ]
    _assert_rows(_read(path), _expected(model, dataset, k=3))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["predictions.csv"]


def test_bare_images_without_files_give_empty_path_and_target(tmp_path):
    images = torch.randn(5, 3, 8, 8)
    model = _model()
    _trainer(tmp_path, callbacks=[PredictionWriter(top_k=2)]).predict(
        model, DataLoader(images, batch_size=2)
    )
    rows = _read(tmp_path / "predictions.csv")
    with torch.no_grad():
        probs = model(images).softmax(dim=-1)
    assert [r["index"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert all(r["path"] == "" and r["target"] == "" for r in rows)
    for row, p in zip(rows, probs):
        assert int(row["top1_class"]) == int(p.argmax())
        assert float(row["top2_prob"]) == pytest.approx(p.sort(descending=True).values[1].item())


class NamedData(pl.LightningDataModule):
    """A data module that names its classes; one of its files has a name that is not UTF-8."""

    classes = [f"class {c}" for c in range(NUM_CLASSES)]

    def __init__(self) -> None:
        super().__init__()
        self.dataset = FileImages(5)
        self.dataset.samples[3] = (os.fsdecode(b"/data/caf\xe9.png"), 7)  # Latin-1 bytes

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=2)


def test_classes_are_named_and_a_non_utf8_file_name_is_written(tmp_path):
    model = _model()
    data = NamedData()
    _trainer(tmp_path, callbacks=[PredictionWriter(top_k=2)]).predict(model, datamodule=data)
    raw = (tmp_path / "predictions.csv").read_bytes()
    raw.decode("utf-8")  # the file stays UTF-8 text
    rows = _read(tmp_path / "predictions.csv")
    assert list(rows[0]) == [
        "index", "path", "target", "target_name",
        "top1_class", "top1_name", "top1_prob", "top2_class", "top2_name", "top2_prob",
    ]  # fmt: skip
    assert rows[3]["path"] == "/data/caf\\xe9.png"  # the byte as \xNN
    with torch.no_grad():
        probs = model(data.dataset.images).softmax(dim=-1)
    for row, p, (_, label) in zip(rows, probs, data.dataset.samples):
        top = p.argsort(descending=True)[:2].tolist()
        assert row["target_name"] == f"class {label}"
        assert [row["top1_name"], row["top2_name"]] == [f"class {c}" for c in top]
        assert int(row["top1_class"]) == top[0]


def test_unwritable_run_directory_fails_before_predicting(tmp_path):
    blocker = tmp_path / "run"
    blocker.write_text("a file where the run directory should be")

    class Count(pl.Callback):
        batches = 0

        def on_predict_batch_start(self, *args) -> None:
            Count.batches += 1

    with pytest.raises(OutputError, match=f"run directory {blocker}"):
        _trainer(blocker, callbacks=[PredictionWriter(), Count()]).predict(
            _model(), DataLoader(torch.randn(4, 3, 8, 8), batch_size=2)
        )
    assert Count.batches == 0
    assert blocker.read_text().startswith("a file")


@pytest.mark.slow
def test_two_process_ddp_writes_the_single_process_file(tmp_path):
    # 7 inputs over 2 ranks: Lightning's predict sampler gives 4 and 3 (no padding);
    # the gathered file must list all 7 once, in dataset order, as one process would.
    dataset = Subset(FileImages(10, seed=1), [3, 8, 1, 6, 0, 9, 5])
    model = _model()
    _trainer(
        tmp_path / "ddp",
        callbacks=[PredictionWriter()],
        devices=2,
        strategy="ddp_spawn",
    ).predict(model, DataLoader(dataset, batch_size=2), return_predictions=False)
    _assert_rows(_read(tmp_path / "ddp" / "predictions.csv"), _expected(model, dataset, k=5))
