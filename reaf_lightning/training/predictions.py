"""``predictions.csv``: what ``reaf-lightning predict`` leaves in the run directory (ours).

One row per input, in the dataset's order: its index, the file it was read
from (torchvision-style ``dataset.samples[index][0]``, through any
``torch.utils.data.Subset``; empty for in-memory datasets; the bytes of a file
name that are not UTF-8 written as ``\\xNN``, so that the file stays UTF-8 text),
its label when the batches carry one, and the ``top_k`` classes with their
probabilities. Classes are indices, each followed by its name when the data module
names its classes (``classes``, one per network output). Under DDP every rank
predicts its share; the rows are gathered on rank 0 and put back in the dataset's
order before the file is written, atomically.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torch.utils.data import Subset

from reaf_lightning.io import atomic_outputs, check_outputs, ensure_writable, shown
from reaf_lightning.runs.layout import PREDICTIONS
from reaf_lightning.runs.writer import claim_for

__all__ = ["PredictionWriter", "input_path"]


def input_path(dataset: Any, index: int) -> str:
    """The file input ``index`` of ``dataset`` was read from, or ``""`` if it has none."""
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    samples = getattr(dataset, "samples", None)
    return shown(samples[index][0]) if samples is not None else ""


class PredictionWriter(BasePredictionWriter):
    """Write the top-k predictions of ``predict`` to ``<run dir>/<filename>``.

    The run directory is ``trainer.default_root_dir``; it is checked writable
    before any prediction is computed. The module's ``predict_step`` must
    return class probabilities, one row per input (as
    :class:`~reaf_lightning.ImageClassifier` does).

    Args:
        filename: name of the CSV file in the run directory.
        top_k: classes kept per input (at most the number of classes).
    """

    def __init__(self, filename: str = PREDICTIONS, top_k: int = 5) -> None:
        super().__init__(write_interval="batch")
        self.filename, self.top_k = filename, top_k
        self._rows: list[tuple] = []
        self._names: list[str] | None = None
        self._outputs: int | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ensure_writable(trainer.default_root_dir, "run directory")
        check_outputs([Path(trainer.default_root_dir) / self.filename])  # before any prediction
        self._rows, self._outputs = [], None
        names = getattr(trainer.datamodule, "classes", None)
        plain = isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)
        self._names = list(names) if plain else None

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Tensor,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        probs, classes = (
            prediction.detach().float().topk(min(self.top_k, prediction.shape[1]), dim=1)
        )
        self._outputs = int(prediction.shape[1])
        labelled = isinstance(batch, (tuple, list)) and len(batch) > 1
        targets = batch[1].tolist() if labelled else [""] * len(probs)
        if not batch_indices:  # a loader without a sampler: number the inputs as they come
            seen = sum(1 for row in self._rows if row[0] == dataloader_idx)
            batch_indices = range(seen, seen + len(probs))
        loaders = trainer.predict_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        dataset = getattr(loader, "dataset", None)
        for index, target, top_c, top_p in zip(
            batch_indices, targets, classes.tolist(), probs.tolist()
        ):
            row = (dataloader_idx, int(index), input_path(dataset, int(index)), target)
            self._rows.append((*row, top_c, top_p))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = self._rows
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[list[tuple]] = [[] for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / self.filename
            claim_for(trainer, [path])  # the run's file from now on
            self.write(path, rows)
        self._rows = []

    def write(self, path: Path, rows: list[tuple]) -> None:
        """Write ``rows`` sorted by (dataloader, index), once per input, atomically."""
        unique = sorted({(row[0], row[1]): row for row in rows}.values(), key=lambda r: r[:2])
        k = max((len(row[4]) for row in unique), default=0)
        several = len({row[0] for row in unique}) > 1
        names = self._names if self._names and len(self._names) == self._outputs else None

        def named(c: int) -> list:
            return [c, names[c] if 0 <= c < len(names) else ""] if names else [c]

        header = ["dataloader"] * several + ["index", "path", "target"]
        header += ["target_name"] if names else []
        for rank in range(1, k + 1):
            header += [f"top{rank}_class"] + [f"top{rank}_name"] * bool(names)
            header += [f"top{rank}_prob"]
        with (
            atomic_outputs([path]) as (tmp,),
            open(tmp, "w", newline="", encoding="utf-8") as handle,
        ):
            writer = csv.writer(handle)
            writer.writerow(header)
            for loader_idx, index, file, target, top_c, top_p in unique:
                labelled = named(int(target)) if target != "" else [""] * (1 + bool(names))
                pairs = [v for c, prob in zip(top_c, top_p) for v in (*named(c), prob)]
                writer.writerow([loader_idx] * several + [index, file, *labelled, *pairs])
