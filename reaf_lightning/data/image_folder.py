"""Folder-per-class image data modules, ImageNet with the paper's augmentation as an option.

The paper (§IV-B) on ImageNet: "The image is resized for scale augmentation. A
224x224 crop is randomly sampled from an image or its horizontal flip, with
per-pixel normalization" - the wording of He et al. 2016, whose recipe draws
the shorter side uniformly from [256, 480]. ``augmentation="scale_jitter"``
is that recipe. Ours, because the paper does not give them:

* ``augmentation="random_resized_crop"`` (default): torchvision's reference
  ImageNet recipe, the common modern substitute for scale augmentation.
* normalisation by a per-*channel* mean/std (ImageNet's torchvision values)
  instead of He et al.'s per-*pixel* mean image, which would need a pass over
  the training set; the colour (PCA lighting) augmentation of He et al. is not
  mentioned by the paper and not used.
* evaluation: shorter side resized to ``resize_size`` (256 for 224) and a
  centre crop, a single view (He et al. report 10-crop testing).

Robustness (ours): every layout problem is found in ``prepare_data``/``setup``
and reported as one line naming the path. Undecodable images follow
``on_corrupt``:

* ``"skip"`` (default): nothing is checked up front (start-up stays fast on
  1.3 M files); a file that fails to decode is replaced by the next readable
  sample, with a :class:`CorruptImageWarning` naming it and counting the files
  skipped so far (per process: DataLoader workers and DDP ranks count apart).
* ``"error"``: every image is decoded at set-up (in parallel; verdicts cached
  by path, size and modification time, so the next set-up only ``stat``s) and
  set-up fails with the count and the first files. Unreadable files are
  reported as permission problems, not as corrupt images.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from reaf_lightning.errors import ConfigError

from .base import BaseDataModule, check_positive_int
from .errors import CorruptImageError, CorruptImageWarning, DatasetPermissionError
from .images import load_rgb, scan_image_folder, verify_images

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "default_eval_resize",
]

#: The standard ImageNet statistics (torchvision's reference scripts; ours, see above).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Augmentation = Literal["random_resized_crop", "scale_jitter"]
OnCorrupt = Literal["skip", "error"]
_SHOWN = 5  # files named in a set-up error


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


def default_eval_resize(image_size: int) -> int:
    """Evaluation resize side: ``round(image_size / 0.875)`` (256 for 224), or ``image_size``
    itself for small images (<= 64 px), where a 14% border would crop away much of a tiny
    object."""
    return image_size if image_size <= 64 else round(image_size / 0.875)


class ImageFolderDataModule(BaseDataModule):
    """Any folder-per-class dataset: ``root/train/<class>/**`` and ``root/val/<class>/**``.

    Labels follow the sorted class folder names and files the order of
    ``torchvision.datasets.ImageFolder``; ``num_classes`` is the number of class
    folders. The validation split doubles as the test and the predict split
    (ImageNet's labelled test set is not public); its ``samples`` name the file
    behind every prediction, in loader order.

    Args:
        root: dataset root holding ``train/`` and ``val/``.
        image_size: side of the network input (the crop).
        batch_size: images per batch, per device.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory; ``None`` means "if CUDA is available".
        mean: per-channel normalisation mean (default ImageNet's).
        std: per-channel normalisation std (default ImageNet's).
        resize_size: evaluation resize side (default :func:`default_eval_resize`).
        augmentation: ``"random_resized_crop"`` (ours) or ``"scale_jitter"``
            (the paper's, see the module doc) for training images.
        scale_jitter_range: inclusive range of the shorter side for
            ``"scale_jitter"`` (He et al.: 256 to 480); the low end must be
            at least ``image_size``.
        on_corrupt: ``"skip"`` or ``"error"`` (see the module doc).
        verify_cache: JSON file caching the ``"error"`` mode's verdicts;
            ``"auto"`` puts it under ``~/.cache/reaf_lightning/``, ``None`` disables it.
        drop_last: drop the last incomplete training batch.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        resize_size: int | None = None,
        augmentation: Augmentation = "random_resized_crop",
        scale_jitter_range: tuple[int, int] = (256, 480),
        on_corrupt: OnCorrupt = "skip",
        verify_cache: str | None = "auto",
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            mean=mean,
            std=std,
            drop_last=drop_last,
        )
        self.save_hyperparameters()
        self.root = Path(root)
        self.resize_size = check_positive_int(
            "resize_size",
            default_eval_resize(image_size) if resize_size is None else resize_size,
            minimum=image_size,
        )
        _check_choice("augmentation", augmentation, Augmentation)
        _check_choice("on_corrupt", on_corrupt, OnCorrupt)
        self.augmentation = augmentation
        low, high = (int(v) for v in scale_jitter_range)
        if augmentation == "scale_jitter" and not image_size <= low <= high:
            raise ConfigError(
                f"scale_jitter_range must be (low, high) with image_size ({image_size}) <= low "
                f"<= high, got {tuple(scale_jitter_range)}"
            )
        self.scale_jitter_range = (low, high)
        self.on_corrupt = on_corrupt
        self.verify_cache = verify_cache
        self._classes: list[str] | None = None
        self._samples: dict[str, list[tuple[str, int]]] | None = None
        self._verified = False

    # -- dataset facts -------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """Class folder names in label order (the layout is checked on first use)."""
        return self._index()[0]

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """Number of class folders; the CLI links this into the model."""
        return len(self.classes)

    def train_transform(self) -> v2.Compose:
        if self.augmentation == "scale_jitter":
            low, high = self.scale_jitter_range
            geometry = [v2.RandomResize(low, high + 1), v2.RandomCrop(self.image_size)]
        else:
            geometry = [v2.RandomResizedCrop(self.image_size)]
        return v2.Compose([*geometry, v2.RandomHorizontalFlip(), *self._to_tensor()])

    def eval_transform(self) -> v2.Compose:
        return v2.Compose(
            [v2.Resize(self.resize_size), v2.CenterCrop(self.image_size), *self._to_tensor()]
        )

    def _to_tensor(self) -> list[v2.Transform]:
        return [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(self.mean), std=list(self.std)),
        ]

    # -- Lightning hooks -----------------------------------------------------------------------
    def _index(self) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
        if self._samples is None:
            self._classes, self._samples = scan_image_folder(self.root)
        assert self._classes is not None
        return self._classes, self._samples

    def _cache_path(self) -> Path | None:
        if self.verify_cache != "auto":
            return None if self.verify_cache is None else Path(self.verify_cache)
        digest = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:16]
        return Path.home() / ".cache" / "reaf_lightning" / f"verified-{digest}.json"

    def _verify(self) -> None:
        if self.on_corrupt != "error" or self._verified:
            return
        paths = [path for split in self._index()[1].values() for path, _ in split]
        bad = verify_images(paths, cache_file=self._cache_path())
        denied = [p for p, err in bad.items() if isinstance(err, DatasetPermissionError)]
        if denied:
            raise DatasetPermissionError(
                f"{len(denied)} image(s) under '{self.root}' cannot be read (permission "
                f"denied), e.g. {', '.join(denied[:_SHOWN])}; fix their permissions"
            )
        if bad:
            shown = "; ".join(str(err) for err in list(bad.values())[:_SHOWN])
            raise CorruptImageError(
                f"{len(bad)} corrupt image(s) of {len(paths)} under '{self.root}' (on_corrupt="
                f"'error'; remove them or use on_corrupt='skip'), first {min(len(bad), _SHOWN)}: "
                f"{shown}"
            )
        self._verified = True

    def prepare_data(self) -> None:
        """Check the layout; with ``on_corrupt="error"`` decode every image (fills the cache)."""
        self._index()
        self._verify()

    def setup(self, stage: str | None = None) -> None:
        """Index the folders and build the datasets; every layout problem is raised here."""
        samples = self._index()[1]
        self._verify()  # instant when prepare_data ran in this process or the cache is warm
        self.train_dataset = ImageFileDataset(
            samples["train"], self.train_transform(), self.on_corrupt
        )
        self.val_dataset = ImageFileDataset(samples["val"], self.eval_transform(), self.on_corrupt)
        self.test_dataset = self.predict_dataset = self.val_dataset


def _check_choice(name: str, value: str, choices: object) -> None:
    allowed = choices.__args__  # type: ignore[attr-defined]
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet (ILSVRC2012) in ``root/{train,val}/<wnid>/*.JPEG``; defaults of the paper (§IV-B).

    The validation images must be sorted into class folders (e.g. with the
    ILSVRC2012 ``valprep.sh`` script). ``num_classes`` is read from the
    folders (1000 for the full dataset; a subset works too). See the module
    doc for which transforms are the paper's (``augmentation="scale_jitter"``)
    and which ours.

    The paper's batch of 256 is the *global* batch: ``batch_size`` is per
    device, so on 8 GPUs use ``batch_size=32``.
    """

    def __init__(
        self,
        root: str = "data/imagenet",
        batch_size: int = 256,
        num_workers: int = 8,
        pin_memory: bool | None = None,
        image_size: int = 224,
        resize_size: int | None = None,
        augmentation: Augmentation = "random_resized_crop",
        scale_jitter_range: tuple[int, int] = (256, 480),
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        on_corrupt: OnCorrupt = "skip",
        verify_cache: str | None = "auto",
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            root=root,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            mean=mean,
            std=std,
            resize_size=resize_size,
            augmentation=augmentation,
            scale_jitter_range=scale_jitter_range,
            on_corrupt=on_corrupt,
            verify_cache=verify_cache,
            drop_last=drop_last,
        )
