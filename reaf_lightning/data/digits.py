"""scikit-learn "digits" as a tiny, download-free stand-in for CIFAR (quick start and CI).

Not part of the paper: it exists so that the whole REAF pipeline (SPEC
sections 3-4: CIFAR-stem networks on 32x32 RGB input) can be trained end to
end in minutes on a laptop CPU without any dataset download. The 1797 8x8
grey images of ``sklearn.datasets.load_digits`` (bundled with scikit-learn)
are upsampled to ``image_size`` x ``image_size`` (bilinear), replicated to
three channels and scaled to [0, 1], so that any CIFAR-stem model accepts them
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ._common import check_non_negative_int, check_positive_int, make_loader
from .augment import apply_crop_flip, sample_crop_flip_params

__all__ = ["DigitsDataModule"]


@dataclass(frozen=True)
class _DigitsTensors:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    train_index: np.ndarray
    val_index: np.ndarray
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


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
        img = self.images[index : index + 1] - self.fill
        oy, ox, flips = sample_crop_flip_params(1, self.shift, flip=False)
        img = apply_crop_flip(img, oy, ox, flips, self.shift) + self.fill
        return img[0], self.labels[index]


class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn digits (10 classes), upsampled to 3 x ``image_size`` x ``image_size``.

    The split is a fixed, stratified ``train_test_split`` (``val_fraction`` of
    the 1797 images go to validation, every class in the same proportion),
    reproducible through ``seed``. All images are pre-computed once as float
    tensors and served from a ``TensorDataset``, so an epoch costs almost
    nothing beyond the model itself.

    Normalisation: per-channel mean/std computed on the *training split only*
    (no validation leakage). A fixed 0.5/0.5 would leave the inputs badly
    off-centre, because most pixels of a digit image are black background.
    The three channels are identical copies, so the three numbers are equal.

    Under DDP ``batch_size`` is per device (per process): the global batch is
    ``batch_size * devices * num_nodes``. Lightning inserts the
    ``DistributedSampler``.

    Args:
        batch_size: images per batch, per device.
        num_workers: DataLoader worker processes (0 is fastest for in-memory tensors).
        image_size: output side length; the 8x8 digits are upsampled bilinearly.
        val_fraction: fraction of images held out for validation, in (0, 1).
        seed: seed of the stratified split (and nothing else).
        pin_memory: pin host memory for faster host-to-GPU copies.
        augment: random translation by up to ``image_size // 16`` pixels on the
            training split (off by default; the quick start does not need it).
    """

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
        super().__init__()
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_workers = check_non_negative_int("num_workers", num_workers)
        self.image_size = check_positive_int("image_size", image_size)
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.pin_memory = bool(pin_memory)
        self.augment = bool(augment)
        self._tensors: _DigitsTensors | None = None
        self.save_hyperparameters()

    # -- dataset facts -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes (10 digits); the CLI links this into the model."""
        return 10

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        return [str(i) for i in range(10)]

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean of the training split, in [0, 1] pixel units."""
        return self._build().mean

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel standard deviation of the training split."""
        return self._build().std

    @property
    def train_indices(self) -> np.ndarray:
        """Indices into ``load_digits()`` of the training split (for inspection/tests)."""
        return self._build().train_index

    @property
    def val_indices(self) -> np.ndarray:
        """Indices into ``load_digits()`` of the validation split."""
        return self._build().val_index

    # -- building ------------------------------------------------------------------------------
    def _build(self) -> _DigitsTensors:
        """Load, split, upsample and normalise once; cached on the instance."""
        if self._tensors is not None:
            return self._tensors
        digits = load_digits()
        images = np.asarray(digits.images, dtype=np.float32) / 16.0  # pixel values are 0..16
        labels = np.asarray(digits.target, dtype=np.int64)
        index = np.arange(len(labels))
        train_index, val_index = train_test_split(
            index,
            test_size=self.val_fraction,
            stratify=labels,
            random_state=self.seed,
            shuffle=True,
        )
        x = torch.from_numpy(images)[:, None]  # (N, 1, 8, 8)
        if self.image_size != x.shape[-1]:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        x = x.clamp_(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()
        y = torch.from_numpy(labels)
        tr = torch.from_numpy(np.sort(train_index))
        va = torch.from_numpy(np.sort(val_index))
        mean = float(x[tr].mean())
        std = float(x[tr].std())
        x = (x - mean) / std
        self._tensors = _DigitsTensors(
            train_x=x[tr],
            train_y=y[tr],
            val_x=x[va],
            val_y=y[va],
            train_index=tr.numpy(),
            val_index=va.numpy(),
            mean=(mean, mean, mean),
            std=(std, std, std),
        )
        return self._tensors

    def setup(self, stage: str | None = None) -> None:
        """Build the tensors (no files, no download: the data ships with scikit-learn)."""
        t = self._build()
        if self.augment:
            black = [(0.0 - m) / s for m, s in zip(t.mean, t.std, strict=True)]
            fill = torch.tensor(black).view(1, 3, 1, 1)
            shift = max(1, self.image_size // 16)
            self.train_dataset: Dataset = _ShiftDataset(t.train_x, t.train_y, shift, fill)
        else:
            self.train_dataset = TensorDataset(t.train_x, t.train_y)
        self.val_dataset = TensorDataset(t.val_x, t.val_y)

    def train_dataloader(self) -> DataLoader:
        return make_loader(
            self.train_dataset, self.batch_size, True, self.num_workers, self.pin_memory
        )

    def val_dataloader(self) -> DataLoader:
        return make_loader(
            self.val_dataset, self.batch_size, False, self.num_workers, self.pin_memory
        )

    def test_dataloader(self) -> DataLoader:
        """Digits has no separate test split; the validation split is returned."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """``reaf-lightning predict`` runs on the validation split (images and labels, in order)."""
        return self.val_dataloader()
