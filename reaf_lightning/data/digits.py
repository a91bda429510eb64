"""scikit-learn "digits" as a tiny, download-free stand-in for CIFAR (quick start and CI).

Not part of the paper: it lets the whole REAF pipeline (CIFAR-stem networks on
32x32 RGB input, paper §IV-A) train end to end in minutes on a laptop CPU
without a download. The 1797 8x8 grey images of
``sklearn.datasets.load_digits`` (bundled with scikit-learn) are upsampled to
``image_size`` x ``image_size`` (bilinear), replicated to three channels and
scaled to [0, 1], so any CIFAR-stem model accepts them unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from reaf_lightning.errors import ConfigError

from .augment import apply_crop_flip, sample_crop_flip_params
from .base import BaseDataModule, check_positive_int

__all__ = ["DigitsDataModule"]


class _Labelled(TensorDataset):
    """Images and labels as tensors, the labels also as ``targets`` (the evaluation order)."""

    @property
    def targets(self) -> list[int]:
        return self.tensors[1].tolist()


class _ShiftDataset(Dataset):
    """Random translation by up to ``shift`` pixels (zero fill), no flip (digits are chiral)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int, fill: torch.Tensor):
        self.images = images
        self.labels = labels
        self.shift = shift
        self.fill = fill  # normalised value of a black pixel, per channel

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Shift the un-normalised image so that the padding is black, like the background.
        image = self.images[index : index + 1] - self.fill
        params = sample_crop_flip_params(1, self.shift, flip=False)
        image = apply_crop_flip(image, *params, padding=self.shift) + self.fill
        return image[0], self.labels[index]


class DigitsDataModule(BaseDataModule):
    """scikit-learn digits (10 classes), upsampled to 3 x ``image_size`` x ``image_size``.

    The split is a fixed, stratified ``train_test_split`` (``val_fraction`` of
    the 1797 images go to validation, every class in the same proportion),
    reproducible through ``seed``; the validation split doubles as the test and
    predict split. The images are computed once, at construction (well under a
    second), and served from tensors, so an epoch costs almost nothing beyond
    the model.

    Normalisation: per-channel mean/std of the *training split only* (no
    validation leakage); the three channels are copies, so the three numbers
    are equal. A fixed 0.5/0.5 would leave the inputs badly off-centre, as most
    pixels of a digit are black background.

    Args:
        batch_size: images per batch, per device.
        num_workers: DataLoader worker processes. 0 by default, unlike the other modules
            (which follow the CPUs): the images are in-memory tensors, so a worker only
            adds its start-up (about 0.6 s per fit measured on a 2-core machine).
        image_size: output side length; the 8x8 digits are upsampled bilinearly.
        val_fraction: fraction of images held out for validation, in (0, 1).
        seed: seed of the stratified split (and nothing else).
        pin_memory: pin host memory for faster host-to-GPU copies.
        augment: random translation by up to ``image_size // 16`` pixels (at least
            1) on the training split (off by default; the quick start does not need it).
    """

    num_classes = 10
    classes = [str(i) for i in range(10)]
    dataset_name = "digits"

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        image_size: int = 32,
        val_fraction: float = 0.2,
        seed: int = 0,
        pin_memory: bool = False,
        augment: bool = False,
    ) -> None:
        if not 0.0 < float(val_fraction) < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        images, labels, self.train_indices, self.val_indices = _load(
            check_positive_int("image_size", image_size), float(val_fraction), int(seed)
        )
        train = torch.from_numpy(self.train_indices)
        mean, std = float(images[train].mean()), float(images[train].std())
        super().__init__(
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            mean=(mean,) * 3,
            std=(std,) * 3,
        )
        self.save_hyperparameters()
        images = (images - mean) / std
        val = torch.from_numpy(self.val_indices)
        self.shift = max(1, image_size // 16) if augment else 0
        if augment:
            fill = torch.full((1, 3, 1, 1), -mean / std)  # a black pixel, normalised
            self.train_dataset = _ShiftDataset(images[train], labels[train], self.shift, fill)
        else:
            self.train_dataset = TensorDataset(images[train], labels[train])
        self.val_dataset = self.test_dataset = self.predict_dataset = _Labelled(
            images[val], labels[val]
        )

    def augmentation_summary(self) -> str:
        return f"random shift up to {self.shift} px" if self.shift else "none"


def _load(
    image_size: int, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Upsampled ``(N, 3, S, S)`` images in [0, 1], labels, sorted train and val indices."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    labels = np.asarray(digits.target, dtype=np.int64)
    train_index, val_index = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=seed
    )
    images = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / 16.0)[:, None]
    if image_size != images.shape[-1]:
        images = F.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    images = images.clamp_(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()
    return images, torch.from_numpy(labels), np.sort(train_index), np.sort(val_index)
