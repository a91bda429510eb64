"""The base of every data module: dataset facts, loaders and the device-side batch hook.

As torchgeo's ``BaseDataModule``: this class owns what all modules share
(``num_classes``, ``image_size``, ``mean``/``std``, the four loaders and an
optional augmentation applied to training batches after they reach the
device); a concrete module only says where its data is and how one sample is
read, by filling ``train_dataset``, ``val_dataset``, ``test_dataset`` and
``predict_dataset`` in ``setup``.

``batch_size`` is per device (per process): under DDP the global batch is
``batch_size * devices * num_nodes``, and Lightning inserts the
``DistributedSampler`` into these plain loaders (shuffling for training, in
order for evaluation and prediction).

Evaluation order (ours): the validation and test loaders visit their split in
one fixed, class-mixed order (:func:`class_mixed_order`), so that a limited
evaluation (``trainer.limit_val_batches``) sees every class in proportion
rather than the first classes of a split stored in class order (an image
folder, a label-sorted file); a full evaluation's metrics do not depend on the
order. Under DDP Lightning wraps the order's sampler in its
``DistributedSamplerWrapper``: rank ``r`` of ``W`` takes positions ``r, r + W,
...`` of the same order, so the ranks' first batches together are again its
first images. Prediction stays in file order (``predictions.csv`` follows it).

``num_workers=None`` (the default of every module but digits; ours) follows the machine:
:func:`default_num_workers` gives each training process
``min(max_auto_workers, cpus // processes_on_this_machine - 1)`` workers (at
least 1), Lightning's own suggestion (``suggested_max_num_workers``) capped per
module, so neither Lightning nor PyTorch warns about the worker count, and a
2-core laptop does not start 4 workers per loader. CPUs are those this process
may run on (``os.sched_getaffinity``: a SLURM or container limit counts), not
the machine's total.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities import suggested_max_num_workers
from torch.utils.data import Dataset, RandomSampler, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler as ResumableRandomSampler

from reaf_lightning.errors import ConfigError

__all__ = [
    "BaseDataModule",
    "ClassMixedSampler",
    "ShuffleSampler",
    "check_positive_int",
    "class_mixed_order",
    "default_num_workers",
]


class ShuffleSampler(ResumableRandomSampler, RandomSampler):
    """torchdata's resumable random order, recognised by Lightning as a shuffle.

    torchdata's sampler saves its position in the checkpoint, so a fit resumed
    mid-epoch sees the rest of the same order. Lightning recognises a shuffled
    loader only by ``isinstance(sampler, torch.utils.data.RandomSampler)``; without
    that base class, DDP would wrap the sampler in Lightning's
    ``DistributedSamplerWrapper`` (each rank slicing its own process's random
    order) instead of giving every rank a ``DistributedSampler(shuffle=True)``.
    The behaviour is torchdata's (first base class); torch's class is only the type.
    """


def class_mixed_order(labels: Sequence[int]) -> list[int]:
    """A fixed order of ``labels``' indices that interleaves the classes in proportion.

    The ``j``-th of a class's ``n`` items (in file order) is placed at ``(j + 1/2) / n``
    of the way through, ties in label order: every prefix holds each class in about
    its share of the split (equal classes: one of each, in turn). No randomness: the
    same labels always give the same order.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.size == 0:
        return []
    _, klass, counts = np.unique(y, return_inverse=True, return_counts=True)
    grouped = np.argsort(klass, kind="stable")  # each class's items, in file order
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    rank = np.empty(y.size, dtype=np.float64)
    rank[grouped] = np.arange(y.size) - starts
    return np.lexsort((klass, (rank + 0.5) / counts[klass])).tolist()


class ClassMixedSampler(Sampler[int]):
    """The evaluation order of a split: :func:`class_mixed_order` of its labels.

    Not a ``SequentialSampler``, so under DDP Lightning shards it with its
    ``DistributedSamplerWrapper`` (every rank takes every ``world_size``-th position
    of this order, none shuffled).
    """

    def __init__(self, labels: Sequence[int]) -> None:
        self.order = class_mixed_order(labels)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def default_num_workers(cap: int, processes: int = 1) -> int:
    """DataLoader workers per process for ``processes`` training processes on this machine.

    Lightning's suggestion (the usable CPUs divided among the processes, one left
    for each main process, at least 1) capped at ``cap``: more workers than the
    loader can use only cost memory and start-up time.
    """
    return min(cap, suggested_max_num_workers(max(1, processes)))


def _check_stats(name: str, values: Sequence[float]) -> tuple[float, ...]:
    stats = tuple(float(v) for v in values)
    if len(stats) != 3:
        raise ConfigError(f"{name} needs 3 values (one per RGB channel), got {values!r}")
    if name == "std" and any(v <= 0 for v in stats):
        raise ConfigError(f"std values must be > 0, got {values!r}")
    return stats


class BaseDataModule(pl.LightningDataModule):
    """Loaders, normalisation statistics and the device-side training-batch hook.

    Attributes:
        num_classes: number of classes (the CLI links it into the model).
        image_size: side of the square network input.
        mean: per-channel normalisation mean, in [0, 1] pixel units.
        std: per-channel normalisation standard deviation.
        batch_augmentation: if set, applied to the images of every *training*
            batch after it reached the device (``on_after_batch_transfer``);
            evaluation and prediction batches are never touched.

    Args:
        image_size: side of the square network input.
        batch_size: images per batch, per device.
        num_workers: DataLoader worker processes per training process; ``None``
            follows the machine (:func:`default_num_workers`, at most
            ``max_auto_workers``).
        pin_memory: pin host memory; ``None`` means "if CUDA is available".
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation (> 0).
        drop_last: drop the last incomplete training batch.
    """

    num_classes: int
    #: The data set's name in the run record and the W&B tags (a subclass sets its own;
    #: ``None``: the class name).
    dataset_name: str | None = None
    #: The most workers ``num_workers=None`` gives a process (a subclass sets its own).
    max_auto_workers: int = 4

    def __init__(
        self,
        *,
        image_size: int,
        batch_size: int,
        num_workers: int | None,
        pin_memory: bool | None,
        mean: Sequence[float],
        std: Sequence[float],
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        self.image_size = check_positive_int("image_size", image_size)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.workers_setting = (
            None if num_workers is None else check_positive_int("num_workers", num_workers, 0)
        )
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.mean = _check_stats("mean", mean)
        self.std = _check_stats("std", std)
        self.drop_last = bool(drop_last)
        self.batch_augmentation: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.predict_dataset: Dataset | None = None

    @property
    def num_workers(self) -> int:
        """Workers of every loader: the setting, or :func:`default_num_workers` for the
        processes the attached trainer runs on this machine (one without a trainer)."""
        if self.workers_setting is not None:
            return self.workers_setting
        processes = self.trainer.num_devices if self.trainer is not None else 1
        return default_num_workers(self.max_auto_workers, processes)

    def augmentation_summary(self) -> str | None:
        """The training images' augmentation, in words (each subclass describes its own)."""
        return None

    def describe(self) -> dict[str, Any]:
        """The data set as the run record holds it: name, classes, image size,
        augmentation and the images in each split set up so far."""
        splits = (("train", self.train_dataset), ("val", self.val_dataset))
        splits += (("test", self.test_dataset),)
        return {
            "dataset": self.dataset_name or type(self).__name__,
            "num_classes": int(self.num_classes),
            "image_size": self.image_size,
            "augmentation": self.augmentation_summary(),
            "sizes": {name: len(data) for name, data in splits if data is not None},
        }

    def _dataloader(self, dataset: Dataset | None, split: str) -> StatefulDataLoader:
        """A ``DataLoader`` whose position Lightning saves in every checkpoint and restores,
        so a fit resumed mid-epoch sees the rest of that epoch's order, not a new one;
        evaluation in the class-mixed order of the module doc (when the dataset has
        ``targets``)."""
        if dataset is None:
            raise RuntimeError(f"call setup() before asking for the {split} loader")
        train = split == "train"
        sampler = ShuffleSampler(dataset) if train else None
        labels = getattr(dataset, "targets", None)
        if split in ("val", "test") and labels is not None:
            sampler = ClassMixedSampler(labels)
        with warnings.catch_warnings():  # torchdata 0.11 calls a deprecated torch telemetry hook
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
            return StatefulDataLoader(
                dataset,
                batch_size=self.batch_size,
                sampler=sampler,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                drop_last=self.drop_last and train,
                persistent_workers=self.num_workers > 0,
            )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._dataloader(self.train_dataset, "train")

    def val_dataloader(self) -> StatefulDataLoader:
        return self._dataloader(self.val_dataset, "val")

    def test_dataloader(self) -> StatefulDataLoader:
        return self._dataloader(self.test_dataset, "test")

    def predict_dataloader(self) -> StatefulDataLoader:
        """In file order, without augmentation (``predict_dataset``; see the subclass)."""
        return self._dataloader(self.predict_dataset, "predict")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Apply ``batch_augmentation`` to training batches, on the device they now live on."""
        if self.batch_augmentation is None or self.trainer is None or not self.trainer.training:
            return batch
        images, labels = batch
        return self.batch_augmentation(images), labels
