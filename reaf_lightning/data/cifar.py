"""CIFAR-100 data module.

The paper (§IV-A) says only "crop translation and flipping data augmentation".
Ours, following the common pytorch-cifar100 recipe the paper's numbers
resemble: random crop 32 with zero padding 4, horizontal flip with
probability 1/2, and normalisation with mean (0.5071, 0.4865, 0.4409) and std
(0.2673, 0.2564, 0.2762). The paper reports *test* error and has no
validation split, so by default the 10,000 test images are the validation set
(``val_split="test"``); a held-out part of the training set can be chosen
instead.

Files are the python version (``root/cifar-100-python/{train,test,meta}``).
They are read by our own 20-line reader rather than
``torchvision.datasets.CIFAR100`` because that class unpickles with
``pickle.load`` (a crafted file runs code), refuses any copy whose MD5 differs
from the official archive, and says only "Dataset not found or corrupted";
ours unpickles arrays, lists and dicts only and names the file and what is
wrong. torchvision's downloader fetches and checks the archive.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from reaf_lightning.errors import ConfigError, one_line

from .augment import apply_crop_flip, normalize_uint8, sample_crop_flip_params
from .base import BaseDataModule
from .errors import DatasetLayoutError, DatasetNotFoundError, DatasetPermissionError

__all__ = [
    "CIFAR100DataModule",
    "CIFAR100Dataset",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR100_URL",
    "check_cifar100_files",
    "load_cifar100_classes",
    "load_cifar100_split",
]

#: Per-channel training-set statistics of the pytorch-cifar100 recipe (ours, not the paper's).
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
_FOLDER = "cifar-100-python"


def _hint(root: Path) -> str:
    return (
        f"expected the python version of CIFAR-100 extracted there, i.e. "
        f"'{root / _FOLDER}/{{train,test,meta}}' (from {CIFAR100_URL}); "
        "set download=true to fetch it when online"
    )


def check_cifar100_files(root: str | Path) -> Path:
    """Check that ``root/cifar-100-python/{train,test,meta}`` exist; return that folder.

    Raises:
        DatasetNotFoundError: naming the missing root, folder or file(s).
    """
    root = Path(root)
    base = root / _FOLDER
    if not root.is_dir():
        raise DatasetNotFoundError(f"CIFAR-100 root '{root}' does not exist: {_hint(root)}")
    if not base.is_dir():
        raise DatasetNotFoundError(f"CIFAR-100 folder '{base}' does not exist: {_hint(root)}")
    missing = [
        str(base / name) for name in ("train", "test", "meta") if not (base / name).is_file()
    ]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-100 file(s) missing: {', '.join(missing)}; {_hint(root)}"
        )
    return base


class _ArrayUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays only: a data file never runs code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # files pickled with numpy < 2
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it holds a '{module}.{name}' object, not image arrays")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as handle:
            raw = _ArrayUnpickler(handle, encoding="bytes").load()
    except PermissionError as err:
        raise DatasetPermissionError(
            f"cannot read CIFAR-100 file '{path}': permission denied"
        ) from err
    except Exception as err:  # any unpickling failure means a damaged or foreign file
        raise DatasetLayoutError(
            f"cannot read CIFAR-100 file '{path}' ({type(err).__name__}: {one_line(err)}); "
            f"re-extract {CIFAR100_URL} into '{path.parent.parent}'"
        ) from err
    if not isinstance(raw, dict):
        raise DatasetLayoutError(f"CIFAR-100 file '{path}' is not a pickled dict")
    # The official files were written by Python 2 (keys load as bytes); accept str keys too.
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def load_cifar100_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one split as ``(images uint8 (N, 3, 32, 32), fine labels int64 (N,))``.

    Args:
        root: the folder that contains ``cifar-100-python``.
        split: ``"train"`` or ``"test"``.
    """
    path = check_cifar100_files(root) / split
    content = _load_pickle(path)
    for key in ("data", "fine_labels"):
        if key not in content:
            raise DatasetLayoutError(
                f"CIFAR-100 file '{path}' has no '{key}' entry (keys: {sorted(content)})"
            )
    data = np.asarray(content["data"])
    labels = np.asarray(content["fine_labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetLayoutError(
            f"CIFAR-100 file '{path}': 'data' must be uint8 of shape (N, 3072), "
            f"got {data.dtype} {data.shape}"
        )
    if data.shape[0] == 0:
        raise DatasetLayoutError(f"CIFAR-100 file '{path}' holds no images; {_hint(Path(root))}")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise DatasetLayoutError(
            f"CIFAR-100 file '{path}': {data.shape[0]} images need as many integer labels, "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0 or labels.max() > 99:
        raise DatasetLayoutError(
            f"CIFAR-100 file '{path}': fine labels must be in [0, 99], "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar100_classes(root: str | Path) -> list[str]:
    """The 100 fine class names from ``meta`` (label order)."""
    path = check_cifar100_files(root) / "meta"
    names = _load_pickle(path).get("fine_label_names")
    if not isinstance(names, list) or len(names) != 100:
        raise DatasetLayoutError(f"CIFAR-100 file '{path}' must hold 100 'fine_label_names'")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


class CIFAR100Dataset(Dataset):
    """In-memory uint8 CIFAR images, optionally augmented, optionally normalised.

    Augmentation is torchvision's ``RandomCrop(32, padding)`` and
    ``RandomHorizontalFlip`` on the uint8 tensor, normalisation
    :func:`normalize_uint8` - the reference the device-side path is tested
    against. ``normalize=False`` yields raw uint8 images for that path.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: bool,
        padding: int = 4,
        normalize: bool = True,
    ) -> None:
        self.images = images
        self.labels = labels
        self.mean = mean
        self.std = std
        self.normalize = normalize
        self.augment = (
            v2.Compose([v2.RandomCrop(32, padding=padding), v2.RandomHorizontalFlip()])
            if augment
            else None
        )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment is not None:
            image = self.augment(image)
        if self.normalize:
            image = normalize_uint8(image[None], self.mean, self.std)[0]
        return image, int(self.labels[index])


class CIFAR100DataModule(BaseDataModule):
    """CIFAR-100 (100 classes, 32x32) with the training recipe of the module doc.

    Validation is the official test set by default (``val_split="test"``), as
    the paper reports test error; ``val_split=0.1`` holds out a stratified 10%
    of the training images instead (fixed by ``seed``) and keeps the test set
    for ``trainer.test``. ``predict`` runs on the test set, in file order.

    ``gpu_augment=True`` (ours, for speed): the loader only gathers uint8
    images, and crop, flip and normalisation run on whole training batches on
    the training device (``on_after_batch_transfer``, one fused ``gather``), so
    no per-image Python work bounds a fast GPU. Same distribution as the CPU
    path (tested); random draws from a generator seeded by ``(seed, epoch,
    rank)``, so DDP ranks draw independently and a run is reproducible.

    Args:
        root: folder containing ``cifar-100-python/{train,test,meta}``.
        batch_size: images per batch, per device (the recipe's 128 is global).
        num_workers: DataLoader workers.
        pin_memory: pin host memory; ``None`` means "if CUDA is available".
        download: fetch and check the archive in ``prepare_data`` if it is missing.
        val_split: ``"test"`` or a fraction in (0, 1) of the training set.
        augment: random crop (padding 4) + horizontal flip on the training set.
        gpu_augment: augment and normalise training batches on the device.
        mean: per-channel normalisation mean (default: pytorch-cifar100's).
        std: per-channel normalisation std (default: pytorch-cifar100's).
        seed: seed of the ``val_split`` fraction and of the device-side draws;
            ``None`` follows Lightning's global seed (``seed_everything``, env
            ``PL_GLOBAL_SEED``, else 0).
        drop_last: drop the last incomplete training batch.
    """

    num_classes = 100

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
        super().__init__(
            image_size=32,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            mean=mean,
            std=std,
            drop_last=drop_last,
        )
        self.save_hyperparameters()
        self.root = Path(root)
        self.download = bool(download)
        if val_split != "test":
            try:
                fraction = float(val_split)
            except (TypeError, ValueError):
                fraction = -1.0
            if not 0.0 < fraction < 1.0:
                raise ConfigError(
                    f"val_split must be 'test' or a fraction in (0, 1), got {val_split!r}"
                )
            val_split = fraction
        self.val_split = val_split
        self.augment = bool(augment)
        self.gpu_augment = bool(gpu_augment)
        self.seed = seed
        self._generator: tuple[tuple[str, int, int], torch.Generator] | None = None

    @property
    def resolved_seed(self) -> int:
        """``seed``, or Lightning's global seed when ``seed`` is None."""
        return self.seed if self.seed is not None else int(os.getenv("PL_GLOBAL_SEED", 0))

    @property
    def classes(self) -> list[str]:
        """Fine class names in label order (read from ``meta``)."""
        return load_cifar100_classes(self.root)

    def prepare_data(self) -> None:
        """Download if asked (rank 0 only), then fail early if files are missing."""
        if self.download and not (self.root / _FOLDER / "meta").is_file():
            from torchvision.datasets import CIFAR100
            from torchvision.datasets.utils import download_and_extract_archive

            try:
                download_and_extract_archive(
                    CIFAR100.url, str(self.root), filename=CIFAR100.filename, md5=CIFAR100.tgz_md5
                )
            except Exception as err:  # URLError, HTTPError, socket errors, checksum failures
                raise DatasetNotFoundError(
                    f"downloading CIFAR-100 into '{self.root}' failed ({type(err).__name__}: "
                    f"{one_line(err)}); when offline put the extracted '{_FOLDER}' folder "
                    f"from {CIFAR100_URL} there"
                ) from err
        check_cifar100_files(self.root)

    def setup(self, stage: str | None = None) -> None:
        """Load the pickles once (every rank) and build the split datasets."""
        if self.test_dataset is not None:
            return
        x_train, y_train = load_cifar100_split(self.root, "train")
        x_test, y_test = load_cifar100_split(self.root, "test")
        load_cifar100_classes(self.root)  # validates meta before training starts
        train_index = val_index = np.arange(len(y_train))
        if self.val_split != "test":
            from sklearn.model_selection import train_test_split

            train_index, val_index = (
                np.sort(part)
                for part in train_test_split(
                    train_index,
                    test_size=float(self.val_split),
                    stratify=_stratify_or_none(y_train, float(self.val_split)),
                    random_state=self.resolved_seed,
                )
            )

        def dataset(images: np.ndarray, labels: np.ndarray, train: bool) -> CIFAR100Dataset:
            on_cpu = not (train and self.gpu_augment)
            return CIFAR100Dataset(
                torch.from_numpy(images),
                torch.from_numpy(labels),
                self.mean,
                self.std,
                augment=train and self.augment and on_cpu,
                normalize=on_cpu,
            )

        self.train_dataset = dataset(x_train[train_index], y_train[train_index], train=True)
        self.test_dataset = self.predict_dataset = dataset(x_test, y_test, train=False)
        self.val_dataset = (
            self.test_dataset
            if self.val_split == "test"
            else dataset(x_train[val_index], y_train[val_index], train=False)
        )
        self.batch_augmentation = self.augment_batch if self.gpu_augment else None

    def _device_generator(self, device: torch.device) -> torch.Generator:
        trainer = self.trainer
        epoch, rank = (trainer.current_epoch, trainer.global_rank) if trainer else (0, 0)
        key = (str(device), epoch, rank)
        if self._generator is None or self._generator[0] != key:
            state = np.random.SeedSequence([self.resolved_seed, epoch, rank]).generate_state(1)
            self._generator = (key, torch.Generator(device).manual_seed(int(state[0])))
        return self._generator[1]

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Crop + flip (if ``augment``) and normalise a uint8 batch where it lies (the device)."""
        if self.augment:
            generator = self._device_generator(images.device)
            params = sample_crop_flip_params(
                images.shape[0], 4, True, device=images.device, generator=generator
            )
            images = apply_crop_flip(images, *params, padding=4)
        return normalize_uint8(images, self.mean, self.std)


def _stratify_or_none(labels: np.ndarray, fraction: float) -> np.ndarray | None:
    """Labels to stratify on, or None where a stratified split is impossible (tiny data)."""
    counts = np.bincount(labels)
    n_classes = int((counts > 0).sum())
    n_val = int(np.ceil(fraction * len(labels)))
    if counts[counts > 0].min() < 2 or min(n_val, len(labels) - n_val) < n_classes:
        return None
    return labels
