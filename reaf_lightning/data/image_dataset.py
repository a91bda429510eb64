"""A dataset of image files: ``(path, label)`` samples decoded to RGB, corrupt files handled.

Used by :class:`~reaf_lightning.data.ImageFolderDataModule` (see its module doc for when
files are checked up front and when a training file is skipped while loading).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import Dataset

from reaf_lightning.errors import CorruptImageError, CorruptImageWarning

from .images import load_rgb

__all__ = ["ImageFileDataset", "OnCorrupt"]

OnCorrupt = Literal["skip", "error"]


class ImageFileDataset(Dataset):
    """``(path, label)`` samples decoded to RGB, corrupt files skipped or refused.

    Attributes:
        samples: ``(path, class_index)`` pairs in loader order, as
            ``torchvision.datasets.ImageFolder.samples``.
        skipped: files skipped so far by this process.

    Args:
        samples: ``(path, label)`` pairs.
        transform: applied to the RGB PIL image.
        on_corrupt: ``"skip"`` - return the next readable sample (wrapping
            around) and warn once per file; ``"error"`` - raise
            :class:`CorruptImageError` naming the file.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable[[Image.Image], torch.Tensor],
        on_corrupt: OnCorrupt = "skip",
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        """The labels in ``samples`` order (as ``torchvision.datasets.ImageFolder.targets``)."""
        return [label for _, label in self.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.samples)
        for step in range(n):
            path, label = self.samples[(index + step) % n]
            if path in self.skipped:
                continue
            try:
                image = load_rgb(path)
            except CorruptImageError as err:
                if self.on_corrupt == "error":
                    raise
                self.skipped.add(path)
                warnings.warn(
                    f"skipped: {err}; {len(self.skipped)} unreadable file(s) skipped so far "
                    "by this dataset (counted per process)",
                    CorruptImageWarning,
                    stacklevel=2,
                )
                continue
            return self.transform(image), label
        raise CorruptImageError(f"none of the {n} images of this dataset can be decoded")
