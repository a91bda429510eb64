"""CIFAR-100 data module with the paper's recipe (SPEC section 4).

Training augmentation: random crop 32 with zero padding 4 and random
horizontal flip; normalisation with mean (0.5071, 0.4865, 0.4409) and std
(0.2673, 0.2564, 0.2762). The paper reports *test* error on CIFAR-100 and has
no separate validation split, so by default the 10,000-image test set is used
as the validation set (``val_split="test"``); a held-out part of the training
set can be chosen instead.

Files are read from the torchvision on-disk format
(``root/cifar-100-python/{train,test,meta}``, pickled dicts), with our own
reader rather than ``torchvision.datasets.CIFAR100`` so that a missing or
malformed file gives a clear error naming it (torchvision only says "Dataset
not found or corrupted") and so that files without the official checksums
(tests, re-packed copies) load too. torchvision is used for downloading.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ._common import check_non_negative_int, check_positive_int, check_stats, make_loader
from .augment import normalize_uint8
from .device_loader import DeviceCIFARLoader
from .errors import DatasetLayoutError, DatasetNotFoundError
from .stats import CIFAR100_MEAN, CIFAR100_STD

__all__ = [
    "CIFAR100DataModule",
    "CIFAR100Dataset",
    "CIFAR100_URL",
    "check_cifar100_files",
    "load_cifar100_split",
    "load_cifar100_classes",
]

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
_FOLDER = "cifar-100-python"
_FILES = ("train", "test", "meta")


def _layout_hint(root: Path) -> str:
    return (
        f"expected the python version of CIFAR-100 extracted there, i.e. "
        f"'{root / _FOLDER}/{{train,test,meta}}' (from {CIFAR100_URL}); "
        f"set download=true to fetch it when online"
    )


def check_cifar100_files(root: str | Path) -> Path:
    """Check that ``root/cifar-100-python/{train,test,meta}`` exist; return that folder.

    Raises:
        DatasetNotFoundError: naming the missing root, folder or file(s).
    """
    root = Path(root)
    base = root / _FOLDER
    if not root.is_dir():
        raise DatasetNotFoundError(f"CIFAR-100 root '{root}' does not exist: {_layout_hint(root)}")
    if not base.is_dir():
        raise DatasetNotFoundError(
            f"CIFAR-100 folder '{base}' does not exist: {_layout_hint(root)}"
        )
    missing = [str(base / f) for f in _FILES if not (base / f).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-100 file(s) missing: {', '.join(missing)}; {_layout_hint(root)}"
        )
    return base


def _load_pickle(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="bytes")
    except Exception as exc:  # any unpickling failure means a damaged file
        raise DatasetLayoutError(
            f"cannot read CIFAR-100 file '{path}' ({type(exc).__name__}: {exc}); "
            f"re-extract {CIFAR100_URL} into '{path.parent.parent}'"
        ) from exc
    if not isinstance(raw, dict):
        raise DatasetLayoutError(f"CIFAR-100 file '{path}' is not a pickled dict")
    # Official files were written by Python 2 (keys load as bytes); accept str keys too.
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def load_cifar100_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one split as ``(images uint8 (N, 3, 32, 32), fine labels int64 (N,))``.

    Args:
        root: the folder that contains ``cifar-100-python``.
        split: ``"train"`` or ``"test"``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = check_cifar100_files(root) / split
    d = _load_pickle(path)
    for key in ("data", "fine_labels"):
        if key not in d:
            raise DatasetLayoutError(
                f"CIFAR-100 file '{path}' has no '{key}' entry (keys: {sorted(d)})"
            )
    data = np.asarray(d["data"])
    labels = np.asarray(d["fine_labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetLayoutError(
            f"CIFAR-100 file '{path}': 'data' must be uint8 of shape (N, 3072), "
            f"got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise DatasetLayoutError(
            f"CIFAR-100 file '{path}': {labels.shape[0]} labels for {data.shape[0]} images"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 99):
        raise DatasetLayoutError(
            f"CIFAR-100 file '{path}': fine labels must be in [0, 99], "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar100_classes(root: str | Path) -> list[str]:
    """The 100 fine class names from ``meta`` (label order)."""
    path = check_cifar100_files(root) / "meta"
    names = _load_pickle(path).get("fine_label_names")
    if names is None or len(names) != 100:
        raise DatasetLayoutError(f"CIFAR-100 file '{path}' must hold 100 'fine_label_names'")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _stratify_or_none(labels: np.ndarray, fraction: float) -> np.ndarray | None:
    """Labels to stratify on, or None where a stratified split is impossible (tiny data)."""
    counts = np.bincount(labels)
    n_classes = int((counts > 0).sum())
    n_val = int(np.ceil(fraction * len(labels)))
    if counts[counts > 0].min() < 2 or min(n_val, len(labels) - n_val) < n_classes:
        return None
    return labels


class CIFAR100Dataset(Dataset):
    """In-memory CIFAR images with the paper's (optional) augmentation and normalisation.

    Augmentation uses torchvision's own ``RandomCrop(32, padding=4)`` and
    ``RandomHorizontalFlip`` on the uint8 tensor, then :func:`normalize_uint8`
    (``ToTensor`` + ``Normalize`` arithmetic), so this CPU path is the reference
    the device-resident path is tested against.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: bool,
        padding: int = 4,
    ) -> None:
        self.images = images
        self.labels = labels
        self.mean = mean
        self.std = std
        self.augment = (
            v2.Compose([v2.RandomCrop(32, padding=padding), v2.RandomHorizontalFlip()])
            if augment
            else None
        )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index]
        if self.augment is not None:
            img = self.augment(img)
        return normalize_uint8(img[None], self.mean, self.std)[0], int(self.labels[index])


@dataclass
class _Split:
    images: torch.Tensor  # uint8 (N, 3, 32, 32)
    labels: torch.Tensor  # int64 (N,)


class CIFAR100DataModule(pl.LightningDataModule):
    """CIFAR-100 (100 classes, 32x32) with the REAF paper's training recipe.

    Validation is the official test set by default (``val_split="test"``),
    because the paper reports CIFAR-100 *test* error; ``val_split=0.1`` would
    instead hold out a stratified 10% of the training images (fixed ``seed``)
    and keep the test set for ``trainer.test``.

    Under DDP ``batch_size`` is per device (per process): the global batch is
    ``batch_size * devices * num_nodes`` (the paper's 128 is the global batch
    on one GPU). With the ``DataLoader`` path Lightning inserts a
    ``DistributedSampler``; with ``gpu_augment=True`` the
    :class:`DeviceCIFARLoader` shards by rank itself in the same way.

    Args:
        root: folder containing ``cifar-100-python/{train,test,meta}``.
        batch_size: images per batch, per device.
        num_workers: DataLoader workers (ignored with ``gpu_augment``).
        pin_memory: pin host memory; ``None`` means "if CUDA is available"
            (ignored with ``gpu_augment``).
        download: fetch and extract the archive (torchvision) in ``prepare_data``
            if it is missing; needs internet access.
        val_split: ``"test"`` (paper) or a fraction in (0, 1) of the training set.
        augment: random crop (padding 4) + horizontal flip on the training set.
        gpu_augment: keep the uint8 dataset on the training device and augment
            whole batches there (fast path; same augmentation distribution).
        mean: per-channel normalisation mean (default: the paper's).
        std: per-channel normalisation std (default: the paper's).
        seed: seed of the ``val_split`` fraction and of the device loader's
            permutation/augmentation streams; ``None`` follows Lightning's global
            seed (``seed_everything``, env ``PL_GLOBAL_SEED``, else 0), the seed
            Lightning gives its injected ``DistributedSampler``, so under DDP both
            paths give each rank the same samples every epoch.
        drop_last: drop the last incomplete training batch.
    """

    def __init__(
        self,
        root: str = "data/cifar100",
        batch_size: int = 128,
        num_workers: int = 4,
        pin_memory: bool | None = None,
        download: bool = False,
        val_split: str | float = "test",
        augment: bool = True,
        gpu_augment: bool = False,
        mean: tuple[float, float, float] = CIFAR100_MEAN,
        std: tuple[float, float, float] = CIFAR100_STD,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_workers = check_non_negative_int("num_workers", num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.download = bool(download)
        if val_split != "test":
            try:
                fraction = float(val_split)
            except (TypeError, ValueError):
                fraction = -1.0
            if not 0.0 < fraction < 1.0:
                raise ValueError(
                    f"val_split must be 'test' or a fraction in (0, 1), got {val_split!r}"
                )
            val_split = fraction
        self.val_split = val_split
        self.augment = bool(augment)
        self.gpu_augment = bool(gpu_augment)
        self._mean = check_stats("mean", mean)
        self._std = check_stats("std", std)
        self.seed = seed
        self.drop_last = bool(drop_last)
        self._splits: dict[str, _Split] = {}
        self.save_hyperparameters()

    # -- dataset facts -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """100 fine classes; the CLI links this into the model."""
        return 100

    @property
    def mean(self) -> tuple[float, ...]:
        return self._mean

    @property
    def std(self) -> tuple[float, ...]:
        return self._std

    @property
    def resolved_seed(self) -> int:
        """``seed``, or Lightning's global seed when ``seed`` is None (see the class doc)."""
        return self.seed if self.seed is not None else int(os.getenv("PL_GLOBAL_SEED", 0))

    @property
    def classes(self) -> list[str]:
        """Fine class names in label order (read from ``meta``)."""
        return load_cifar100_classes(self.root)

    # -- Lightning hooks -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download if asked (rank 0 only), then fail early if files are missing."""
        if self.download:
            self._download()
        check_cifar100_files(self.root)

    def _download(self) -> None:
        try:
            check_cifar100_files(self.root)
            return
        except DatasetNotFoundError:
            pass
        from torchvision.datasets import CIFAR100

        try:
            CIFAR100(str(self.root), train=True, download=True)
            CIFAR100(str(self.root), train=False, download=True)
        except Exception as exc:  # URLError, HTTPError, socket errors, checksum failures
            raise DatasetNotFoundError(
                f"downloading CIFAR-100 into '{self.root}' failed ({type(exc).__name__}: {exc}); "
                f"when offline put the extracted '{_FOLDER}' folder from {CIFAR100_URL} there"
            ) from exc

    def setup(self, stage: str | None = None) -> None:
        """Load the pickles once (every rank) and build the split datasets."""
        if self._splits:
            return
        x_train, y_train = load_cifar100_split(self.root, "train")
        x_test, y_test = load_cifar100_split(self.root, "test")
        load_cifar100_classes(self.root)  # validates meta before training starts
        test = _Split(torch.from_numpy(x_test), torch.from_numpy(y_test))
        if self.val_split == "test":
            train = _Split(torch.from_numpy(x_train), torch.from_numpy(y_train))
            val = test
        else:
            tr, va = train_test_split(
                np.arange(len(y_train)),
                test_size=float(self.val_split),
                stratify=_stratify_or_none(y_train, float(self.val_split)),
                random_state=self.resolved_seed,
            )
            tr, va = np.sort(tr), np.sort(va)
            train = _Split(torch.from_numpy(x_train[tr]), torch.from_numpy(y_train[tr]))
            val = _Split(torch.from_numpy(x_train[va]), torch.from_numpy(y_train[va]))
        self._splits = {"train": train, "val": val, "test": test}

    def dataset(self, split: str) -> CIFAR100Dataset:
        """The CPU-path dataset of ``split`` ("train", "val" or "test"); call ``setup`` first."""
        if not self._splits:
            raise RuntimeError("call setup() before asking for a dataset")
        s = self._splits[split]
        return CIFAR100Dataset(
            s.images, s.labels, self.mean, self.std, augment=self.augment and split == "train"
        )

    def _device_loader(self, split: str) -> DeviceCIFARLoader:
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            rank, world = self.trainer.global_rank, self.trainer.world_size
        else:
            device, rank, world = torch.device("cpu"), 0, 1
        s = self._splits[split]
        train = split == "train"
        return DeviceCIFARLoader(
            s.images,
            s.labels,
            self.batch_size,
            self.mean,
            self.std,
            device=device,
            augment=self.augment and train,
            shuffle=train,
            drop_last=self.drop_last and train,
            rank=rank,
            world_size=world,
            seed=self.resolved_seed,
        )

    def _loader(self, split: str) -> DataLoader | DeviceCIFARLoader:
        if not self._splits:
            self.setup()
        if self.gpu_augment:
            return self._device_loader(split)
        train = split == "train"
        return make_loader(
            self.dataset(split),
            self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=self.drop_last and train,
        )

    def train_dataloader(self) -> DataLoader | DeviceCIFARLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | DeviceCIFARLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | DeviceCIFARLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader | DeviceCIFARLoader:
        """``reaf-lightning predict`` uses the official test set (file order, no augmentation)."""
        return self._loader("test")
