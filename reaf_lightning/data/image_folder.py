"""Folder-per-class image data modules, including ImageNet with the paper's transforms.

SPEC section 4 (ImageNet recipe): training with ``RandomResizedCrop(224)`` and
a random horizontal flip; evaluation with ``Resize(256)`` and
``CenterCrop(224)``; ImageNet mean/std. :class:`ImageFolderDataModule`
generalises this to any ``root/train/<class>/*`` + ``root/val/<class>/*`` tree.

Robustness *(ours)*: every layout problem (missing root or split folder, a
class folder without images, different class sets in train/ and val/) is
found in ``setup`` and reported as one clear line naming the path. Corrupt
image files are handled according to ``on_corrupt``:

* ``"skip"`` (default): nothing is checked up front (so start-up stays fast on
  1.3 M ImageNet files); a file that fails to decode during training is
  skipped lazily - ``__getitem__`` returns the next readable sample instead,
  and a :class:`CorruptImageWarning` names the file and the number of files
  of that dataset skipped so far (once per file and per process: DataLoader
  workers and DDP ranks each warn and count separately).
* ``"error"``: all images are verified at set-up (``PIL.Image.verify``,
  cheap: headers and chunk checksums, no full decode), and set-up fails
  naming every corrupt file. Verified files can be remembered in a JSON cache
  (keyed by path, size and modification time) so later runs and the other
  DDP ranks only ``stat`` the files. Should a file that passed ``verify`` still
  fail to decode later, the error names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning.pytorch as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ._common import check_non_negative_int, check_positive_int, check_stats, make_loader
from .errors import CorruptImageError, DatasetLayoutError, DatasetNotFoundError
from .stats import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMG_EXTENSIONS",
    "CorruptImageWarning",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "scan_image_folder",
    "verify_images",
]

#: File extensions treated as images (torchvision's list), compared case-insensitively.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: What PIL raises for unreadable files: UnidentifiedImageError and truncation are OSErrors,
#: some damaged PNG chunks raise SyntaxError, some decoders ValueError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

_LAYOUT = "expected '{root}/train/<class>/<image>' and '{root}/val/<class>/<image>'"


class CorruptImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(
        e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
    )


def _check_split_dir(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"image folder root '{root}' does not exist; {_LAYOUT.format(root=root)}"
        )
    split_dir = root / split
    if not split_dir.is_dir():
        raise DatasetNotFoundError(
            f"split folder '{split_dir}' does not exist; {_LAYOUT.format(root=root)}"
        )
    return split_dir


def _split_classes(root: Path, split: str) -> list[str]:
    split_dir = _check_split_dir(root, split)
    classes = _class_dirs(split_dir)
    if not classes:
        loose = sum(1 for e in os.scandir(split_dir) if e.is_file() and _is_image(e.name))
        hint = (
            f" (it holds {loose} loose images: sort them into one folder per class, e.g. with "
            f"the ILSVRC2012 'valprep.sh' script for ImageNet val)"
            if loose
            else ""
        )
        raise DatasetLayoutError(
            f"split folder '{split_dir}' has no class folders{hint}; {_LAYOUT.format(root=root)}"
        )
    return classes


def _checked_classes(root: Path, splits: Sequence[str]) -> list[str]:
    """Class folder names of the first split, after checking every split has the same set."""
    per_split = {s: _split_classes(root, s) for s in splits}
    first = splits[0]
    for other in splits[1:]:
        a, b = set(per_split[first]), set(per_split[other])
        if a != b:
            raise DatasetLayoutError(
                f"class folders differ between '{root / first}' and '{root / other}': "
                f"only in {first}: {sorted(a - b)}; only in {other}: {sorted(b - a)}"
            )
    return per_split[first]


def scan_image_folder(
    root: str | Path, splits: Sequence[str] = ("train", "val")
) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Index ``root/<split>/<class>/*`` and check the layout.

    Classes are the sorted folder names of the first split (labels are their
    index, as in ``torchvision.datasets.ImageFolder``); files within a class
    are sorted by name. Only files with an :data:`IMG_EXTENSIONS` suffix count.

    Returns:
        ``(classes, {split: [(path, label), ...]})``.

    Raises:
        DatasetNotFoundError: the root or a split folder is missing.
        DatasetLayoutError: a split has no class folders, some class folders hold
            no images, or the splits have different class sets.
    """
    root = Path(root)
    classes = _checked_classes(root, splits)
    samples: dict[str, list[tuple[str, int]]] = {}
    empty: list[str] = []
    for split in splits:
        items: list[tuple[str, int]] = []
        for label, cls in enumerate(classes):
            d = root / split / cls
            files = sorted(e.path for e in os.scandir(d) if e.is_file() and _is_image(e.name))
            if not files:
                empty.append(str(d))
            items.extend((f, label) for f in files)
        samples[split] = items
    if empty:
        raise DatasetLayoutError(
            f"class folder(s) without any image ({', '.join(IMG_EXTENSIONS)}): {', '.join(empty)}"
        )
    return classes, samples


def _verify_one(path: str) -> str | None:
    """None if PIL can open and verify ``path``, else the reason."""
    try:
        with Image.open(path) as im:
            im.verify()
    except _DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _file_key(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def verify_images(
    paths: Sequence[str], cache_file: str | Path | None = None, threads: int = 8
) -> dict[str, str]:
    """Verify image files with ``PIL.Image.verify``; return ``{path: reason}`` of corrupt ones.

    Args:
        paths: image files.
        cache_file: optional JSON file remembering files that verified fine
            (with their size and mtime); such files are not opened again while
            unchanged. Written atomically (temporary name, then rename).
        threads: verification threads (the work is I/O bound).
    """
    cache: dict[str, list[int]] = {}
    cache_path = Path(cache_file) if cache_file is not None else None
    if cache_path is not None and cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text()).get("ok", {})
        except (OSError, ValueError):
            cache = {}  # unreadable cache: verify everything again
    keys = {p: _file_key(p) for p in paths}
    todo = [p for p in paths if keys[p] is None or cache.get(os.path.abspath(p)) != keys[p]]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        reasons = dict(zip(todo, pool.map(_verify_one, todo), strict=True))
    bad = {p: r for p, r in reasons.items() if r is not None}
    if cache_path is not None:
        ok = {os.path.abspath(p): keys[p] for p in paths if p not in bad and keys[p] is not None}
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(f"{cache_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"ok": ok}))
            os.replace(tmp, cache_path)
        except OSError as exc:
            warnings.warn(f"could not write verification cache '{cache_path}': {exc}", stacklevel=2)
    return bad


def _load_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")  # forces the full decode inside the try of the caller


class ImageFileDataset(Dataset):
    """``(path, label)`` samples decoded with PIL, with corrupt files skipped or refused.

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
        on_corrupt: str = "skip",
    ) -> None:
        if on_corrupt not in ("skip", "error"):
            raise ValueError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
        if not samples:
            raise ValueError("ImageFileDataset needs at least one sample")
        self.samples = list(samples)
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.skipped: set[str] = set()  # per process

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.samples)
        for step in range(n):
            path, label = self.samples[(index + step) % n]
            if path in self.skipped:
                continue
            try:
                img = _load_rgb(path)
            except _DECODE_ERRORS as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if self.on_corrupt == "error":
                    raise CorruptImageError(f"cannot decode image '{path}' ({reason})") from exc
                self.skipped.add(path)
                warnings.warn(
                    f"skipping unreadable image '{path}' ({reason}); "
                    f"{len(self.skipped)} unreadable file(s) skipped so far by this dataset "
                    f"(counted per process)",
                    CorruptImageWarning,
                    stacklevel=2,
                )
                continue
            return self.transform(img), label
        raise CorruptImageError(f"none of the {n} images of this dataset can be decoded")


def default_eval_resize(image_size: int) -> int:
    """Resize side before the centre crop: ``round(image_size / 0.875)``, or ``image_size``
    itself for small images (<= 64 px), where an extra 14% border would crop away a large
    part of an already tiny object."""
    return image_size if image_size <= 64 else round(image_size / 0.875)


class ImageFolderDataModule(pl.LightningDataModule):
    """Any folder-per-class dataset: ``root/train/<class>/*`` and ``root/val/<class>/*``.

    Training transform: ``RandomResizedCrop(image_size)`` + horizontal flip.
    Evaluation transform: ``Resize(resize_size)`` (shorter side) +
    ``CenterCrop(image_size)``, where ``resize_size`` defaults to
    ``round(image_size / 0.875)`` (256 for 224) and, for ``image_size <= 64``,
    to ``image_size`` itself. ``num_classes`` is the number of class folders;
    labels follow the sorted folder names (torchvision's ImageFolder order).
    The validation split doubles as the test split.

    Under DDP ``batch_size`` is per device (per process): the global batch is
    ``batch_size * devices * num_nodes``. Lightning inserts the
    ``DistributedSampler``.

    Args:
        root: dataset root holding ``train/`` and ``val/``.
        image_size: side of the network input.
        batch_size: images per batch, per device.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory; ``None`` means "if CUDA is available".
        mean: per-channel normalisation mean (default ImageNet's).
        std: per-channel normalisation std (default ImageNet's).
        resize_size: evaluation resize side (see above for the default).
        on_corrupt: ``"skip"`` (lazy, warn and substitute) or ``"error"``
            (verify everything at set-up and refuse); see the module docstring.
        verify_cache: JSON file remembering verified images in ``"error"`` mode;
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
        on_corrupt: str = "skip",
        verify_cache: str | None = "auto",
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.image_size = check_positive_int("image_size", image_size)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_workers = check_non_negative_int("num_workers", num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self._mean = check_stats("mean", mean)
        self._std = check_stats("std", std)
        if resize_size is None:
            resize_size = default_eval_resize(image_size)
        check_positive_int("resize_size", resize_size)
        if resize_size < image_size:
            raise ValueError(
                f"resize_size ({resize_size}) must be >= image_size ({image_size}) "
                f"for the centre crop"
            )
        self.resize_size = resize_size
        if on_corrupt not in ("skip", "error"):
            raise ValueError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
        self.on_corrupt = on_corrupt
        self.verify_cache = verify_cache
        self.drop_last = bool(drop_last)
        self._classes: list[str] | None = None
        self._samples: dict[str, list[tuple[str, int]]] | None = None
        self._verified = False
        self.save_hyperparameters()

    # -- dataset facts -------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """Class folder names in label order (checks the folder layout on first use)."""
        if self._classes is None:
            self._classes = _checked_classes(self.root, ("train", "val"))
        return self._classes

    @property
    def num_classes(self) -> int:
        """Number of class folders; the CLI links this into the model."""
        return len(self.classes)

    @property
    def mean(self) -> tuple[float, ...]:
        return self._mean

    @property
    def std(self) -> tuple[float, ...]:
        return self._std

    def train_transform(self) -> v2.Compose:
        return v2.Compose(
            [
                v2.RandomResizedCrop(self.image_size, antialias=True),
                v2.RandomHorizontalFlip(),
                *self._to_tensor(),
            ]
        )

    def eval_transform(self) -> v2.Compose:
        return v2.Compose(
            [
                v2.Resize(self.resize_size, antialias=True),
                v2.CenterCrop(self.image_size),
                *self._to_tensor(),
            ]
        )

    def _to_tensor(self) -> list:
        return [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(self.mean), std=list(self.std)),
        ]

    # -- Lightning hooks -----------------------------------------------------------------------
    def _cache_path(self) -> Path | None:
        if self.verify_cache is None:
            return None
        if self.verify_cache != "auto":
            return Path(self.verify_cache)
        digest = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:16]
        return Path.home() / ".cache" / "reaf_lightning" / f"verified-{digest}.json"

    def _index(self) -> dict[str, list[tuple[str, int]]]:
        if self._samples is None:
            self._classes, self._samples = scan_image_folder(self.root)
        return self._samples

    def _verify(self) -> None:
        if self.on_corrupt != "error" or self._verified:
            return
        samples = self._index()
        paths = [p for split in ("train", "val") for p, _ in samples[split]]
        bad = verify_images(paths, cache_file=self._cache_path())
        if bad:
            listing = "; ".join(f"{p} ({r})" for p, r in sorted(bad.items()))
            raise CorruptImageError(
                f"{len(bad)} corrupt image(s) under '{self.root}' (on_corrupt='error'; remove "
                f"them or use on_corrupt='skip'): {listing}"
            )
        self._verified = True

    def prepare_data(self) -> None:
        """Check the layout and, with ``on_corrupt="error"``, verify images (fills the cache)."""
        self._index()
        self._verify()

    def setup(self, stage: str | None = None) -> None:
        """Index the folders and build datasets; every layout problem is raised here."""
        samples = self._index()
        self._verify()  # cheap when the cache from prepare_data is warm
        self.train_dataset = ImageFileDataset(
            samples["train"], self.train_transform(), self.on_corrupt
        )
        self.val_dataset = ImageFileDataset(samples["val"], self.eval_transform(), self.on_corrupt)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return make_loader(
            dataset,
            self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=self.drop_last and train,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        """The validation split (ImageNet's labelled test set is not public)."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """``reaf-lightning predict`` runs on the validation split (sorted file order)."""
        return self.val_dataloader()


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet (ILSVRC2012) with the paper's transforms (SPEC section 4).

    Expects ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (the
    validation images sorted into class folders). Training:
    ``RandomResizedCrop(224)`` + flip; evaluation: ``Resize(256)`` +
    ``CenterCrop(224)``; ImageNet mean/std. ``num_classes`` is read from the
    folders (1000 for the full dataset; a subset works too).

    The paper's batch of 256 is the *global* batch: ``batch_size`` is per
    device, so on 8 GPUs use ``batch_size=32`` (or keep 256 per device and
    scale the learning rate linearly with the global batch).
    """

    def __init__(
        self,
        root: str = "data/imagenet",
        batch_size: int = 256,
        num_workers: int = 8,
        pin_memory: bool | None = None,
        image_size: int = 224,
        resize_size: int | None = None,
        on_corrupt: str = "skip",
        verify_cache: str | None = "auto",
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            root=root,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            resize_size=resize_size,
            on_corrupt=on_corrupt,
            verify_cache=verify_cache,
            drop_last=drop_last,
        )
