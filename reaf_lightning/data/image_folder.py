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

Small images (ours): ``augmentation="cifar"`` is the CIFAR recipe of
:mod:`.cifar` for a folder of 32-pixel images: zero-pad 4, random crop back to
``image_size``, horizontal flip, and normalisation by the folder's own
per-channel mean and std (computed over the training images at set-up when
``mean``/``std`` are not given, and recorded in the module's hyperparameters,
so a checkpoint keeps the values it was trained with). Evaluation is a resize
to ``resize_size`` and a centre crop, as for the other recipes (for images of
at most 64 pixels the default ``resize_size`` is ``image_size``: nothing is
cropped).

Robustness (ours): every layout problem is found in ``prepare_data``/``setup``
and reported as one line naming the path. Undecodable images follow
``on_corrupt``:

* ``"skip"`` (default): the evaluation split (``val``, also the test and
  predict split) is fully decoded at set-up (in parallel; verdicts cached by
  path, size and modification time, so the next set-up only ``stat``s) and its
  undecodable files are left out of the index with one
  :class:`CorruptImageWarning` naming them: every validation or test metric and
  every ``predictions.csv`` row belongs to exactly one real image. The training
  split is not checked up front (start-up stays fast on 1.3 M files): a
  training file that fails to decode is replaced by the next readable sample,
  with a :class:`CorruptImageWarning` naming it and counting the files skipped
  so far (per process: DataLoader workers and DDP ranks count apart).
* ``"error"``: every image of both splits is decoded at set-up and set-up fails
  with the count and the first files.

Unreadable files (permissions) are never skipped: they are reported as
permission problems, not as corrupt images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchvision.transforms import v2

from reaf_lightning.errors import (
    ConfigError,
    CorruptImageError,
    CorruptImageWarning,
    DatasetPermissionError,
)

from .base import BaseDataModule, check_positive_int
from .image_dataset import ImageFileDataset, OnCorrupt
from .images import channel_stats, scan_image_folder, verify_images

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "default_eval_resize",
]

#: The standard ImageNet statistics (torchvision's reference scripts; ours, see above).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Augmentation = Literal["random_resized_crop", "scale_jitter", "cifar"]
_SHOWN = 5  # files named in a set-up error
_EVAL_SPLIT = "val"  # also the test and predict split
_CIFAR_PADDING = 4  # the CIFAR recipe's zero padding before the random crop (ours, see .cifar)


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
    behind every prediction, in loader order (undecodable files already left out,
    see the module doc; ``left_out`` lists them).

    Args:
        root: dataset root holding ``train/`` and ``val/``.
        image_size: side of the network input (the crop).
        batch_size: images per batch, per device.
        num_workers: DataLoader worker processes per training process; ``None``
            follows the machine's CPUs (at most 8; see :mod:`.base`).
        pin_memory: pin host memory; ``None`` means "if CUDA is available".
        mean: per-channel normalisation mean; ``None``: ImageNet's, or with
            ``augmentation="cifar"`` the training images' own (computed at set-up).
        std: per-channel normalisation std; ``None`` as for ``mean``.
        resize_size: evaluation resize side (default :func:`default_eval_resize`).
        augmentation: training images' recipe: ``"random_resized_crop"`` (ours),
            ``"scale_jitter"`` (the paper's) or ``"cifar"`` (pad-4 random crop and
            flip, for 32-pixel images); see the module doc.
        scale_jitter_range: inclusive range of the shorter side for
            ``"scale_jitter"`` (He et al.: 256 to 480); the low end must be
            at least ``image_size``.
        on_corrupt: ``"skip"`` or ``"error"`` (see the module doc).
        verify_cache: JSON file caching the set-up decode checks' verdicts (both
            modes); ``"auto"`` puts it under ``~/.cache/reaf_lightning/``, ``None``
            disables it.
        drop_last: drop the last incomplete training batch.
    """

    max_auto_workers = 8  # decoding files is the bottleneck
    dataset_name = "imagefolder"

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        resize_size: int | None = None,
        augmentation: Augmentation = "random_resized_crop",
        scale_jitter_range: tuple[int, int] = (256, 480),
        on_corrupt: OnCorrupt = "skip",
        verify_cache: str | None = "auto",
        drop_last: bool = False,
    ) -> None:
        _check_choice("augmentation", augmentation, Augmentation)
        # The CIFAR recipe's statistics are the folder's own (those not given): known at set-up.
        self.folder_stats = {
            name: augmentation == "cifar" and value is None
            for name, value in (("mean", mean), ("std", std))
        }
        super().__init__(
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            mean=IMAGENET_MEAN if mean is None else mean,
            std=IMAGENET_STD if std is None else std,
            drop_last=drop_last,
        )
        self.save_hyperparameters()
        self.root = Path(root)
        self.resize_size = check_positive_int(
            "resize_size",
            default_eval_resize(image_size) if resize_size is None else resize_size,
            minimum=image_size,
        )
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
        #: Undecodable files left out of the evaluation split at set-up, with the reason.
        self.left_out: dict[str, str] = {}

    # -- dataset facts -------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """Class folder names in label order (the layout is checked on first use)."""
        return self._index()[0]

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """Number of class folders; the CLI links this into the model."""
        return len(self.classes)

    def augmentation_summary(self) -> str:
        size = self.image_size
        if self.augmentation == "cifar":
            return f"resize {size}, random crop {size} (zero padding 4), horizontal flip"
        if self.augmentation == "scale_jitter":
            low, high = self.scale_jitter_range
            return f"shorter side in [{low}, {high}], random crop {size}, horizontal flip"
        return f"RandomResizedCrop {size}, horizontal flip"

    def train_transform(self) -> v2.Compose:
        if self.augmentation == "cifar":
            size = self.image_size
            geometry = [
                v2.Resize(size),
                v2.CenterCrop(size),
                v2.RandomCrop(size, padding=_CIFAR_PADDING),
            ]
        elif self.augmentation == "scale_jitter":
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
        """Decode-check before indexing: both splits (``"error"``) or the evaluation split
        (``"skip"``, whose undecodable files are then left out); see the module doc."""
        if self._verified:
            return
        samples = self._index()[1]
        splits = list(samples) if self.on_corrupt == "error" else [_EVAL_SPLIT]
        paths = [path for split in splits for path, _ in samples[split]]
        bad = verify_images(paths, cache_file=self._cache_path())
        denied = [p for p, err in bad.items() if isinstance(err, DatasetPermissionError)]
        if denied:
            raise DatasetPermissionError(
                f"{len(denied)} image(s) under '{self.root}' cannot be read (permission "
                f"denied), e.g. {', '.join(denied[:_SHOWN])}; fix their permissions"
            )
        shown = "; ".join(str(err) for err in list(bad.values())[:_SHOWN])
        if bad and self.on_corrupt == "error":
            raise CorruptImageError(
                f"{len(bad)} corrupt image(s) of {len(paths)} under '{self.root}' (on_corrupt="
                f"'error'; remove them or use on_corrupt='skip'), first {min(len(bad), _SHOWN)}: "
                f"{shown}"
            )
        if len(bad) == len(paths):
            raise CorruptImageError(
                f"none of the {len(paths)} images of '{self.root / _EVAL_SPLIT}' can be decoded; "
                f"first {min(len(bad), _SHOWN)}: {shown}"
            )
        if bad:
            samples[_EVAL_SPLIT] = [item for item in samples[_EVAL_SPLIT] if item[0] not in bad]
            self.left_out = {path: str(err) for path, err in bad.items()}
            rank_zero_warn(
                f"left out {len(bad)} undecodable image(s) of {len(paths)} in "
                f"'{self.root / _EVAL_SPLIT}' (validation, test and predict use the other "
                f"{len(paths) - len(bad)}), first {min(len(bad), _SHOWN)}: {shown}",
                category=CorruptImageWarning,
            )
        self._verified = True

    def _compute_folder_stats(self) -> None:
        """The CIFAR recipe's mean/std: the training images' own, recorded in ``hparams``."""
        if not any(self.folder_stats.values()):
            return
        crop = v2.Compose([v2.Resize(self.image_size), v2.CenterCrop(self.image_size)])
        paths = [path for path, _ in self._index()[1]["train"]]
        mean, std = channel_stats(paths, lambda image: np.asarray(crop(image)))
        if self.folder_stats["mean"]:
            self.mean = self.hparams["mean"] = mean
        if self.folder_stats["std"]:
            self.std = self.hparams["std"] = std
        self.folder_stats = dict.fromkeys(self.folder_stats, False)

    def prepare_data(self) -> None:
        """Check the layout and decode the images the module doc says (fills the cache)."""
        self._index()
        self._verify()

    def setup(self, stage: str | None = None) -> None:
        """Index the folders and build the datasets; every layout problem is raised here."""
        samples = self._index()[1]
        self._verify()  # instant when prepare_data ran in this process or the cache is warm
        self._compute_folder_stats()
        self.train_dataset = ImageFileDataset(
            samples["train"], self.train_transform(), self.on_corrupt
        )
        # Checked above: a file that fails now changed since, and is an error, never a stand-in.
        self.val_dataset = ImageFileDataset(samples[_EVAL_SPLIT], self.eval_transform(), "error")
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

    dataset_name = "imagenet"

    def __init__(
        self,
        root: str = "data/imagenet",
        batch_size: int = 256,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        image_size: int = 224,
        resize_size: int | None = None,
        augmentation: Augmentation = "random_resized_crop",
        scale_jitter_range: tuple[int, int] = (256, 480),
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
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
