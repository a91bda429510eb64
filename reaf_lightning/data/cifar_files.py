"""Reading the python versions of CIFAR-10 and CIFAR-100 safely, one reader for both.

Files are torchvision's on-disk formats: ``root/cifar-10-batches-py/{data_batch_1..5,
test_batch,batches.meta}`` and ``root/cifar-100-python/{train,test,meta}``. They are read
by our own reader rather than ``torchvision.datasets.CIFAR10``/``CIFAR100`` because those
classes unpickle with ``pickle.load`` (a crafted file runs code), refuse any copy whose MD5
differs from the official archive, and say only "Dataset not found or corrupted"; ours
unpickles arrays, lists and dicts only and names the file and what is wrong.
torchvision's downloader fetches and checks the archive (``download_cifar``).

The two datasets differ only in what :class:`CIFARFormat` lists: the folder, the batch
files of each split, the label key and the meta file. Everything else (the safe
unpickler, the shape and label checks, the messages) is shared.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reaf_lightning.errors import (
    DatasetLayoutError,
    DatasetNotFoundError,
    DatasetPermissionError,
    one_line,
)

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "CIFARFormat",
    "check_cifar_files",
    "download_cifar",
    "load_cifar_classes",
    "load_cifar_split",
]


@dataclass(frozen=True)
class CIFARFormat:
    """What tells one CIFAR python version from the other.

    Attributes:
        name: the dataset's name in messages ("CIFAR-10").
        folder: the folder the archive extracts to, below ``root``.
        url: the official archive.
        splits: the batch files of each split, concatenated in this order.
        label_key: the labels' key in a batch file.
        meta: the file holding the class names.
        names_key: the class names' key in ``meta``.
        num_classes: labels are in ``[0, num_classes)``.
        torchvision_class: the ``torchvision.datasets`` class whose archive name and MD5
            the downloader uses.
    """

    name: str
    folder: str
    url: str
    splits: dict[str, tuple[str, ...]]
    label_key: str
    meta: str
    names_key: str
    num_classes: int
    torchvision_class: str

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the format needs, batches first, then ``meta``."""
        return (*(name for names in self.splits.values() for name in names), self.meta)


CIFAR10 = CIFARFormat(
    name="CIFAR-10",
    folder="cifar-10-batches-py",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    splits={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    label_key="labels",
    meta="batches.meta",
    names_key="label_names",
    num_classes=10,
    torchvision_class="CIFAR10",
)
CIFAR100 = CIFARFormat(
    name="CIFAR-100",
    folder="cifar-100-python",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    splits={"train": ("train",), "test": ("test",)},
    label_key="fine_labels",
    meta="meta",
    names_key="fine_label_names",
    num_classes=100,
    torchvision_class="CIFAR100",
)


def _hint(root: Path, fmt: CIFARFormat) -> str:
    return (
        f"expected the python version of {fmt.name} extracted there, i.e. "
        f"'{root / fmt.folder}/{{{','.join(fmt.files)}}}' (from {fmt.url}); "
        "set download=true to fetch it when online"
    )


def check_cifar_files(root: str | Path, fmt: CIFARFormat) -> Path:
    """Check that every file of ``fmt`` exists below ``root``; return the dataset folder.

    Raises:
        DatasetNotFoundError: naming the missing root, folder or file(s).
    """
    root = Path(root)
    base = root / fmt.folder
    if not root.is_dir():
        raise DatasetNotFoundError(f"{fmt.name} root '{root}' does not exist: {_hint(root, fmt)}")
    if not base.is_dir():
        raise DatasetNotFoundError(f"{fmt.name} folder '{base}' does not exist: {_hint(root, fmt)}")
    missing = [str(base / name) for name in fmt.files if not (base / name).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{fmt.name} file(s) missing: {', '.join(missing)}; {_hint(root, fmt)}"
        )
    return base


def download_cifar(root: str | Path, fmt: CIFARFormat) -> None:
    """Fetch and MD5-check the official archive into ``root`` unless ``meta`` is there already.

    Raises:
        DatasetNotFoundError: the download failed (offline, checksum ...), one line.
    """
    import torchvision.datasets
    from torchvision.datasets.utils import download_and_extract_archive

    root = Path(root)
    if (root / fmt.folder / fmt.meta).is_file():
        return
    source = getattr(torchvision.datasets, fmt.torchvision_class)
    try:
        download_and_extract_archive(
            source.url, str(root), filename=source.filename, md5=source.tgz_md5
        )
    except Exception as err:  # URLError, HTTPError, socket errors, checksum failures
        raise DatasetNotFoundError(
            f"downloading {fmt.name} into '{root}' failed ({type(err).__name__}: "
            f"{one_line(err)}); when offline put the extracted '{fmt.folder}' folder "
            f"from {fmt.url} there"
        ) from err


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


def _load_pickle(path: Path, fmt: CIFARFormat) -> dict[str, object]:
    try:
        with open(path, "rb") as handle:
            raw = _ArrayUnpickler(handle, encoding="bytes").load()
    except PermissionError as err:
        raise DatasetPermissionError(
            f"cannot read {fmt.name} file '{path}': permission denied"
        ) from err
    except Exception as err:  # any unpickling failure means a damaged or foreign file
        raise DatasetLayoutError(
            f"cannot read {fmt.name} file '{path}' ({type(err).__name__}: {one_line(err)}); "
            f"re-extract {fmt.url} into '{path.parent.parent}'"
        ) from err
    if not isinstance(raw, dict):
        raise DatasetLayoutError(f"{fmt.name} file '{path}' is not a pickled dict")
    # The official files were written by Python 2 (keys load as bytes); accept str keys too.
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _load_batch(path: Path, fmt: CIFARFormat) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as ``(uint8 (N, 3072), int labels (N,))``, shapes and labels checked."""
    content = _load_pickle(path, fmt)
    for key in ("data", fmt.label_key):
        if key not in content:
            raise DatasetLayoutError(
                f"{fmt.name} file '{path}' has no '{key}' entry (keys: {sorted(content)})"
            )
    data = np.asarray(content["data"])
    labels = np.asarray(content[fmt.label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetLayoutError(
            f"{fmt.name} file '{path}': 'data' must be uint8 of shape (N, 3072), "
            f"got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],) or (labels.size and labels.dtype.kind not in "iu"):
        raise DatasetLayoutError(
            f"{fmt.name} file '{path}': {data.shape[0]} images need as many integer labels, "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= fmt.num_classes):
        raise DatasetLayoutError(
            f"{fmt.name} file '{path}': labels '{fmt.label_key}' must be in "
            f"[0, {fmt.num_classes - 1}], got range [{labels.min()}, {labels.max()}]"
        )
    return data, labels.astype(np.int64)


def load_cifar_split(
    root: str | Path, split: str, fmt: CIFARFormat
) -> tuple[np.ndarray, np.ndarray]:
    """Read one split as ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    Args:
        root: the folder that contains ``fmt.folder``.
        split: ``"train"`` or ``"test"``; CIFAR-10's five training batches are
            concatenated in file order.
        fmt: :data:`CIFAR10` or :data:`CIFAR100`.
    """
    base = check_cifar_files(root, fmt)
    parts = [_load_batch(base / name, fmt) for name in fmt.splits[split]]
    data = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    if data.shape[0] == 0:
        where = ", ".join(str(base / name) for name in fmt.splits[split])
        raise DatasetLayoutError(
            f"{fmt.name} {split} split ({where}) holds no images; {_hint(Path(root), fmt)}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar_classes(root: str | Path, fmt: CIFARFormat) -> list[str]:
    """The class names from the ``meta`` file, in label order."""
    path = check_cifar_files(root, fmt) / fmt.meta
    names = _load_pickle(path, fmt).get(fmt.names_key)
    if not isinstance(names, list) or len(names) != fmt.num_classes:
        raise DatasetLayoutError(
            f"{fmt.name} file '{path}' must hold {fmt.num_classes} '{fmt.names_key}'"
        )
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
