"""CIFAR-10 and CIFAR-100 data modules: one recipe, two datasets.

The paper (§IV-A) trains on CIFAR-100 and says only "crop translation and
flipping data augmentation". Ours, following the common pytorch-cifar100
recipe the paper's numbers resemble: random crop 32 with zero padding 4,
horizontal flip with probability 1/2, and normalisation with the training
set's per-channel mean and std. The paper reports *test* error and has no
validation split, so by default the 10,000 test images are the validation set
(``val_split="test"``); a held-out part of the training set can be chosen
instead. CIFAR-10 is not in the paper: it gets the same recipe (ours), with
its own statistics.

Files are torchvision's python versions, read safely by :mod:`.cifar_files`
(arrays only, every problem one line naming the file).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from reaf_lightning.errors import ConfigError

from .augment import apply_crop_flip, normalize_uint8, sample_crop_flip_params
from .base import BaseDataModule
from .cifar_files import (
    CIFAR10,
    CIFAR100,
    CIFARFormat,
    check_cifar_files,
    download_cifar,
    load_cifar_classes,
    load_cifar_split,
)

__all__ = [
    "CIFAR10DataModule",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100DataModule",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFARDataset",
]

#: Per-channel training-set statistics of the pytorch-cifar100 recipe (ours, not the paper's).
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)
#: CIFAR-10's per-channel mean and std over all training pixels (ours: the usual values).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


class CIFARDataset(Dataset):
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

    @property
    def targets(self) -> list[int]:
        """The labels in file order (torchvision's name; the evaluation order reads them)."""
        return self.labels.tolist()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment is not None:
            image = self.augment(image)
        if self.normalize:
            image = normalize_uint8(image[None], self.mean, self.std)[0]
        return image, int(self.labels[index])


class _CIFARDataModule(BaseDataModule):
    """A CIFAR dataset (32x32) with the training recipe of the module doc; subclasses say which.

    Validation is the official test set by default (``val_split="test"``; the
    paper does not name the split it reports, the test set is our choice, as is
    usual for CIFAR); ``val_split=0.1`` holds out a stratified 10%
    of the training images instead (fixed by ``seed``) and keeps the test set
    for ``trainer.test``. ``predict`` runs on the test set, in file order.

    ``gpu_augment=True`` (ours, for speed): the loader only gathers uint8
    images, and crop, flip and normalisation run on whole training batches on
    the training device (``on_after_batch_transfer``, one fused ``gather``), so
    no per-image Python work bounds a fast GPU. Same distribution as the CPU
    path (tested); random draws from a generator seeded by ``(seed, epoch,
    rank)``, so DDP ranks draw independently and a run is reproducible.

    Args:
        root: folder containing the extracted archive (``cifar-10-batches-py`` or
            ``cifar-100-python``).
        batch_size: images per batch, per device (the recipe's 128 is global).
        num_workers: DataLoader workers per process; ``None`` follows the machine's
            CPUs (at most 4, see :mod:`.base`).
        pin_memory: pin host memory; ``None`` means "if CUDA is available".
        download: fetch and check the archive in ``prepare_data`` if it is missing.
        val_split: ``"test"`` or a fraction in (0, 1) of the training set.
        augment: random crop (padding 4) + horizontal flip on the training set.
        gpu_augment: augment and normalise training batches on the device.
        mean: per-channel normalisation mean (default: the dataset's training-set mean).
        std: per-channel normalisation std (default: the dataset's training-set std).
        seed: seed of the ``val_split`` fraction and of the device-side draws;
            ``None`` follows Lightning's global seed (``seed_everything``, env
            ``PL_GLOBAL_SEED``, else 0).
        drop_last: drop the last incomplete training batch.
    """

    #: Which CIFAR: files, label key, number of classes (set by the subclass).
    FORMAT: CIFARFormat

    def __init__(
        self,
        *,
        root: str,
        batch_size: int,
        num_workers: int | None,
        pin_memory: bool | None,
        download: bool,
        val_split: str | float,
        augment: bool,
        gpu_augment: bool,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        seed: int | None,
        drop_last: bool,
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
    def num_classes(self) -> int:  # type: ignore[override]
        """The dataset's number of classes; the CLI links this into the model."""
        return self.FORMAT.num_classes

    def augmentation_summary(self) -> str:
        return "random crop 32 (zero padding 4), horizontal flip" if self.augment else "none"

    @property
    def classes(self) -> list[str]:
        """Class names in label order (read from the ``meta`` file)."""
        return load_cifar_classes(self.root, self.FORMAT)

    def prepare_data(self) -> None:
        """Download if asked (rank 0 only), then fail early if files are missing."""
        if self.download:
            download_cifar(self.root, self.FORMAT)
        check_cifar_files(self.root, self.FORMAT)

    def setup(self, stage: str | None = None) -> None:
        """Load the pickles once (every rank) and build the split datasets."""
        if self.test_dataset is not None:
            return
        x_train, y_train = load_cifar_split(self.root, "train", self.FORMAT)
        x_test, y_test = load_cifar_split(self.root, "test", self.FORMAT)
        load_cifar_classes(self.root, self.FORMAT)  # validates meta before training starts
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

        def dataset(images: np.ndarray, labels: np.ndarray, train: bool) -> CIFARDataset:
            on_cpu = not (train and self.gpu_augment)
            return CIFARDataset(
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


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (100 classes, 32x32), the paper's CIFAR dataset (§IV-A).

    Files: ``root/cifar-100-python/{train,test,meta}`` (fine labels). Settings as
    :class:`_CIFARDataModule`; mean/std default to ``CIFAR100_MEAN``/``CIFAR100_STD``.
    """

    FORMAT = CIFAR100
    dataset_name = "cifar100"

    def __init__(
        self,
        root: str = "data/cifar100",
        batch_size: int = 128,
        num_workers: int | None = None,
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
            root=root, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
            download=download, val_split=val_split, augment=augment, gpu_augment=gpu_augment,
            mean=mean, std=std, seed=seed, drop_last=drop_last,
        )  # fmt: skip
        self.save_hyperparameters()


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 (10 classes, 32x32); not in the paper, the same recipe as CIFAR-100 (ours).

    Files: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``, the
    five training batches read in order. Settings as :class:`_CIFARDataModule`;
    mean/std default to ``CIFAR10_MEAN``/``CIFAR10_STD``.
    """

    FORMAT = CIFAR10
    dataset_name = "cifar10"

    def __init__(
        self,
        root: str = "data/cifar10",
        batch_size: int = 128,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        download: bool = False,
        val_split: str | float = "test",
        augment: bool = True,
        gpu_augment: bool = False,
        mean: tuple[float, float, float] = CIFAR10_MEAN,
        std: tuple[float, float, float] = CIFAR10_STD,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            root=root, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
            download=download, val_split=val_split, augment=augment, gpu_augment=gpu_augment,
            mean=mean, std=std, seed=seed, drop_last=drop_last,
        )  # fmt: skip
        self.save_hyperparameters()


def _stratify_or_none(labels: np.ndarray, fraction: float) -> np.ndarray | None:
    """Labels to stratify on, or None where a stratified split is impossible (tiny data)."""
    counts = np.bincount(labels)
    n_classes = int((counts > 0).sum())
    n_val = int(np.ceil(fraction * len(labels)))
    if counts[counts > 0].min() < 2 or min(n_val, len(labels) - n_val) < n_classes:
        return None
    return labels
