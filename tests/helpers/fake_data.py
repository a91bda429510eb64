"""Writers of tiny fake datasets in the real on-disk formats, shared by all tests.

No test may download anything, so tests write a few images in exactly the
layout the data modules read:

* :func:`write_cifar100` - the ``cifar-100-python`` pickles that
  ``torchvision.datasets.CIFAR100`` (and :class:`reaf_lightning.data.CIFAR100DataModule`)
  read.
* :func:`write_cifar10` - the ``cifar-10-batches-py`` pickles of
  ``torchvision.datasets.CIFAR10`` (five training batches, a test batch, ``batches.meta``).
* :func:`write_image_folder` - a ``root/{train,val}/<class>/*.png`` tree, the
  layout of ImageNet after the usual ``valprep`` reorganisation.
* :func:`write_corrupt_image` - garbage bytes under an image file name.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_cifar10", "write_cifar100", "write_image_folder", "write_corrupt_image"]


def _cifar_split(rng: np.random.Generator, n: int, num_classes: int, prefix: str) -> dict:
    # Cycle the labels so every class appears when n >= num_classes.
    fine = (np.arange(n) % num_classes).astype(np.int64)
    rng.shuffle(fine)
    return {
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"fine_labels": [int(v) for v in fine],
        b"coarse_labels": [int(v) // 5 for v in fine],
        b"filenames": [f"{prefix}_{i:05d}.png".encode() for i in range(n)],
        b"batch_label": f"{prefix} batch".encode(),
    }


def write_cifar100(
    root: str | Path,
    n_train: int = 64,
    n_test: int = 32,
    seed: int = 0,
    protocol: int = pickle.DEFAULT_PROTOCOL,
) -> dict[str, dict]:
    """Write a fake CIFAR-100 in the ``cifar-100-python`` layout under ``root``.

    Files: ``root/cifar-100-python/{train,test,meta}``, pickled dicts with
    bytes keys as in the official archive (``b"data"`` is ``(N, 3072)``
    uint8, channel-major: 1024 red, 1024 green, 1024 blue values, each row-major
    32x32; ``b"fine_labels"``/``b"coarse_labels"`` lists; ``b"filenames"``;
    meta has ``b"fine_label_names"`` and ``b"coarse_label_names"``).

    ``protocol=2`` writes the pickle protocol of the official (Python 2) files.

    Returns:
        ``{"train": dict, "test": dict, "meta": dict}``, the dicts written, so a
        test can compare what the data module reads with what was written.
    """
    base = Path(root) / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {
        "train": _cifar_split(rng, n_train, 100, "train"),
        "test": _cifar_split(rng, n_test, 100, "test"),
        "meta": {
            b"fine_label_names": [f"class_{i:03d}".encode() for i in range(100)],
            b"coarse_label_names": [f"super_{i:02d}".encode() for i in range(20)],
        },
    }
    for name, payload in out.items():
        with open(base / name, "wb") as f:
            pickle.dump(payload, f, protocol=protocol)
    return out


def write_cifar10(
    root: str | Path, n_per_batch: int = 8, n_test: int = 16, seed: int = 0, protocol: int = 2
) -> dict[str, dict]:
    """Write a fake CIFAR-10 in the ``cifar-10-batches-py`` layout under ``root``.

    Files as in the official archive: ``data_batch_1`` ... ``data_batch_5`` and
    ``test_batch`` (dicts with ``b"data"`` (N, 3072) uint8 channel-major,
    ``b"labels"`` a list of ints, ``b"filenames"``, ``b"batch_label"``) and
    ``batches.meta`` (``b"label_names"``, 10 names). Python-2 protocol by default.

    Returns:
        ``{file name: dict written}``.
    """
    base = Path(root) / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    for i in range(1, 6):
        batch = _cifar_split(rng, n_per_batch, 10, f"batch{i}")
        out[f"data_batch_{i}"] = {
            b"data": batch[b"data"],
            b"labels": batch[b"fine_labels"],
            b"filenames": batch[b"filenames"],
            b"batch_label": f"training batch {i} of 5".encode(),
        }
    test = _cifar_split(rng, n_test, 10, "test")
    out["test_batch"] = {
        b"data": test[b"data"],
        b"labels": test[b"fine_labels"],
        b"filenames": test[b"filenames"],
        b"batch_label": b"testing batch 1 of 1",
    }
    out["batches.meta"] = {
        b"label_names": [f"label_{i}".encode() for i in range(10)],
        b"num_cases_per_batch": n_per_batch,
        b"num_vis": 3072,
    }
    for name, payload in out.items():
        with open(base / name, "wb") as f:
            pickle.dump(payload, f, protocol=protocol)
    return out


def write_image_folder(
    root: str | Path,
    classes: Sequence[str] = ("cat", "dog", "emu"),
    n_per_class: int = 3,
    size: int | tuple[int, int] = 40,
    splits: Sequence[str] = ("train", "val"),
    ext: str = ".png",
    seed: int = 0,
) -> dict[str, list[tuple[Path, int]]]:
    """Write ``root/<split>/<class>/<class>_<i><ext>`` random RGB images.

    Args:
        root: dataset root to create.
        classes: class folder names (labels are their index in *sorted* order,
            as ImageFolder assigns them).
        n_per_class: images per class per split.
        size: image side (or ``(width, height)``).
        splits: split folders to create.
        ext: file extension; ``.png`` and ``.JPEG`` are both understood by PIL.
        seed: pixel RNG seed.

    Returns:
        ``{split: [(path, label), ...]}`` in sorted path order.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    w, h = (size, size) if isinstance(size, int) else size
    label_of = {c: i for i, c in enumerate(sorted(classes))}
    written: dict[str, list[tuple[Path, int]]] = {}
    for split in splits:
        items = []
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                path = d / f"{cls}_{i}{ext}"
                fmt = "JPEG" if ext.lower() in (".jpg", ".jpeg") else None
                Image.fromarray(arr).save(path, format=fmt)
                items.append((path, label_of[cls]))
        written[split] = sorted(items)
    return written


def write_corrupt_image(path: str | Path, payload: bytes = b"this is not an image\x00\xff") -> Path:
    """Write garbage bytes at ``path`` (e.g. ``.../cat_9.png``) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def folder_datamodule(root: str | Path, **kwargs):
    """An ``ImageFolderDataModule`` sized for tests: 32 px, batches of 4, no workers or cache."""
    from reaf_lightning.data import ImageFolderDataModule

    kwargs.setdefault("image_size", 32)
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("verify_cache", None)
    return ImageFolderDataModule(str(root), **kwargs)
