"""Image files: scanning class folders, decoding any PIL mode to 8-bit RGB, set-up checks.

Not part of the paper (ours): the paper trains on ImageNet JPEGs and says
nothing about reading files. These helpers make a folder of images either
load as the pixels it holds or fail before training with one line naming the
file, the folder and what is wrong.

Decoding uses PIL for every format: it reads all of ``IMG_EXTENSIONS``
(``torchvision.io.decode_image`` reads neither BMP, TIFF nor PGM/PPM) and tells
the pixel mode, which decides the conversion below. Modes map to 8-bit RGB as
follows; anything else is refused, naming the file and the mode:

* ``RGB``; ``1``, ``L``, ``P``, ``RGBX``, ``CMYK``, ``YCbCr``: PIL's conversion
  (``1`` -> 0/255, CMYK -> ``(255 - C)(255 - K) / 255`` ...).
* alpha modes (``LA``, ``PA``, ``RGBA``, ``RGBa``, ``P`` with a transparent
  colour): the straight (un-premultiplied) colour, alpha dropped - what
  torchvision's ``ImageFolder`` loader gives, so a model sees the pixels of the
  usual pipeline.
* 16-bit grey (``I;16*``, and ``I``, which PIL uses for 16-bit PNG/TIFF/PGM):
  ``round(v * 255 / 65535)``; an ``I`` image with values outside [0, 65535]
  has no agreed range and is refused.
* float grey (``F``): ``round(v * 255)`` for values in [0, 1]; other ranges or
  NaN are refused.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from reaf_lightning.errors import (
    CorruptImageError,
    DataError,
    DatasetLayoutError,
    DatasetNotFoundError,
    DatasetPermissionError,
    OutputError,
    one_line,
)
from reaf_lightning.io import atomic_outputs

__all__ = [
    "IMG_EXTENSIONS",
    "MIN_STD",
    "channel_stats",
    "load_rgb",
    "scan_image_folder",
    "verify_images",
]

#: The smallest per-channel std :func:`channel_stats` returns: one 8-bit level (ours). A
#: constant channel has std 0 (float rounding makes it ~1e-9), and normalising by it would
#: blow one level of noise up to +-1e7 or divide by zero.
MIN_STD = 1 / 255

#: What PIL raises for undecodable files: truncation and unknown formats are OSErrors,
#: some damaged PNG chunks raise SyntaxError, some decoders ValueError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_CONVERTED = {"1", "L", "P", "RGBX", "CMYK", "YCbCr"}
_WITH_ALPHA = {"LA", "La", "PA", "RGBA", "RGBa"}
_LAYOUT = "expected '{root}/<split>/<class>/<image>' for the splits {splits}"


def _grey_to_rgb(values: np.ndarray, path: str, mode: str) -> Image.Image:
    high = 1.0 if mode == "F" else 65535
    if not np.all((values >= 0) & (values <= high)):  # NaN compares False: refused as well
        finite = values[np.isfinite(values)]
        found = f"[{finite.min()}, {finite.max()}]" if finite.size else "no finite values"
        nan = " and NaN" if np.isnan(values).any() else ""
        raise CorruptImageError(
            f"image '{path}' has PIL mode {mode} with values in {found}{nan}; only "
            f"[0, {high}] maps to 8-bit intensities: convert the file to 8-bit RGB"
        )
    grey = np.rint(values.astype(np.float64) * (255 / high)).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _to_rgb(image: Image.Image, path: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _WITH_ALPHA or (mode == "P" and "transparency" in image.info):
        return image.convert("RGBA").convert("RGB")
    if mode in _CONVERTED:
        return image.convert("RGB")
    if mode == "F" or mode == "I" or mode.startswith("I;16"):
        return _grey_to_rgb(np.asarray(image), path, mode)
    raise CorruptImageError(
        f"image '{path}' has PIL mode {mode}, which has no agreed 8-bit RGB conversion; "
        "convert it to RGB, L or a 16-bit grey PNG"
    )


def load_rgb(path: str) -> Image.Image:
    """Fully decode ``path`` and return it as an 8-bit RGB PIL image (see the module doc).

    Raises:
        CorruptImageError: undecodable (truncated files included) or a refused mode.
        DatasetPermissionError: the file exists but cannot be read.
        DatasetNotFoundError: the file vanished (or is a dangling symlink).
    """
    try:
        with Image.open(path) as image:
            image.load()  # the whole decode: truncated JPEGs fail here, not in verify()
            return _to_rgb(image, path)
    except DataError:
        raise
    except PermissionError as err:
        raise DatasetPermissionError(f"cannot read image '{path}': permission denied") from err
    except FileNotFoundError as err:
        raise DatasetNotFoundError(f"image '{path}' does not exist (a dangling link?)") from err
    except _DECODE_ERRORS as err:
        raise CorruptImageError(
            f"cannot decode image '{path}' ({type(err).__name__}: {one_line(err)})"
        ) from err


def _entries(directory: str) -> list[os.DirEntry[str]]:
    """A folder's entries, sorted by name; an unreadable folder is a one-line error."""
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda entry: entry.name)
    except PermissionError as err:
        raise DatasetPermissionError(
            f"cannot list folder '{directory}': permission denied"
        ) from err


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """``entry.is_dir()`` (following links), its errors (a link to itself ...) as one line."""
    try:
        return entry.is_dir()
    except PermissionError as err:
        raise DatasetPermissionError(f"cannot inspect '{entry.path}': permission denied") from err
    except OSError as err:
        raise DatasetLayoutError(f"cannot inspect '{entry.path}': {err.strerror}") from err


def _image_files(class_dir: str) -> list[str]:
    """Image files below ``class_dir`` in torchvision ``ImageFolder`` order.

    That is ``sorted(os.walk(class_dir, followlinks=True))``, file names sorted
    within each folder, but a symlink back to a folder being walked is a
    :class:`DatasetLayoutError` (``os.walk`` would repeat the files of the
    loop until the path gets too long) and an unreadable sub-folder a
    :class:`DatasetPermissionError` (``os.walk`` silently skips it).
    """
    found: list[tuple[str, list[str]]] = []

    def visit(directory: str, ancestors: frozenset[tuple[int, int]]) -> None:
        names, subdirs = [], []
        for entry in _entries(directory):
            if not _is_dir(entry):
                if entry.name.lower().endswith(IMG_EXTENSIONS):
                    names.append(entry.name)
                continue
            info = entry.stat()
            key = (info.st_dev, info.st_ino)
            if key in ancestors:
                raise DatasetLayoutError(
                    f"symlink loop: '{entry.path}' leads back to a folder that contains it "
                    f"({os.path.realpath(entry.path)}); remove the link"
                )
            subdirs.append((entry.path, ancestors | {key}))
        found.append((directory, names))
        for path, chain in subdirs:
            visit(path, chain)

    chain = [class_dir, *Path(class_dir).resolve().parents]  # a link to any of them loops
    visit(class_dir, frozenset((s.st_dev, s.st_ino) for s in map(os.stat, chain)))
    return [os.path.join(d, name) for d, names in sorted(found) for name in names]


def _split_classes(root: Path, split: str, splits: Sequence[str]) -> list[str]:
    layout = _LAYOUT.format(root=root, splits=", ".join(splits))
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder root '{root}' does not exist; {layout}")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DatasetNotFoundError(f"split folder '{split_dir}' does not exist; {layout}")
    entries = _entries(str(split_dir))
    # Hidden folders (.ipynb_checkpoints, .git ...) are not classes (ours: ImageFolder counts them).
    classes = [e.name for e in entries if not e.name.startswith(".") and _is_dir(e)]
    if not classes:
        loose = sum(1 for e in entries if e.name.lower().endswith(IMG_EXTENSIONS))
        hint = (
            f" (it holds {loose} loose images: sort them into one folder per class, e.g. with "
            "the ILSVRC2012 'valprep.sh' script for ImageNet val)"
            if loose
            else ""
        )
        raise DatasetLayoutError(f"split folder '{split_dir}' has no class folders{hint}; {layout}")
    return classes


def scan_image_folder(
    root: str | Path, splits: Sequence[str] = ("train", "val")
) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Index ``root/<split>/<class>/**`` and check the layout.

    Classes are the sorted folder names (labels are their index) and files are
    ordered as in ``torchvision.datasets.ImageFolder``; only files with an
    ``IMG_EXTENSIONS`` suffix count.

    Returns:
        ``(classes, {split: [(path, label), ...]})``.

    Raises:
        DatasetNotFoundError: the root or a split folder is missing.
        DatasetLayoutError: a split has no class folders, a class folder no
            image, the splits have different class sets, or a symlink loops.
        DatasetPermissionError: a folder cannot be read.
    """
    root = Path(root)
    per_split = {split: _split_classes(root, split, splits) for split in splits}
    classes = per_split[splits[0]]
    for split in splits[1:]:
        first, other = set(classes), set(per_split[split])
        if first != other:
            raise DatasetLayoutError(
                f"class folders differ between '{root / splits[0]}' and '{root / split}': "
                f"only in {splits[0]}: {sorted(first - other)}; only in {split}: "
                f"{sorted(other - first)}"
            )
    samples: dict[str, list[tuple[str, int]]] = {}
    empty: list[str] = []
    for split in splits:
        samples[split] = []
        for label, name in enumerate(classes):
            files = _image_files(str(root / split / name))
            if not files:
                empty.append(str(root / split / name))
            samples[split].extend((path, label) for path in files)
    if empty:
        raise DatasetLayoutError(
            f"class folder(s) without any image ({', '.join(IMG_EXTENSIONS)}): {', '.join(empty)}"
        )
    return classes, samples


def _check_one(path: str) -> DataError | None:
    try:
        load_rgb(path)
    except DataError as err:
        return err
    return None


def _file_key(path: str) -> list[int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def _read_cache(cache: Path | None) -> dict[str, list[int]]:
    if cache is None or not cache.is_file():
        return {}
    try:
        return json.loads(cache.read_text()).get("ok", {})
    except (OSError, ValueError, AttributeError):
        return {}  # an unreadable cache only costs a re-check


def verify_images(
    paths: Sequence[str], cache_file: str | Path | None = None, threads: int | None = None
) -> dict[str, DataError]:
    """Fully decode every image (in parallel threads); return ``{path: error}`` of unusable ones.

    A real decode, not ``PIL.Image.verify``: a truncated JPEG passes ``verify``
    and would only fail mid-epoch. The errors are those of :func:`load_rgb`
    (undecodable or refused images, unreadable files). Shows a progress bar on
    a terminal when more than 1,000 files need checking.

    Args:
        paths: image files.
        cache_file: JSON file remembering the files that decoded fine, with
            their size and modification time; unchanged files are not opened
            again (a second set-up only ``stat``s them). Written atomically; a
            cache that cannot be written is only a warning.
        threads: decoding threads (PIL releases the GIL while decoding);
            default ``min(32, cpu_count + 4)``.
    """
    import warnings

    from tqdm.auto import tqdm

    cache = Path(cache_file) if cache_file is not None else None
    known = _read_cache(cache)
    keys = {path: _file_key(path) for path in paths}
    todo = [p for p in paths if keys[p] is None or known.get(os.path.abspath(p)) != keys[p]]
    with (
        ThreadPoolExecutor(max_workers=threads) as pool,
        tqdm(
            total=len(todo), desc="checking images", unit="img", disable=len(todo) <= 1000 or None
        ) as bar,
    ):
        verdicts = {}
        for path, verdict in zip(todo, pool.map(_check_one, todo), strict=True):
            verdicts[path] = verdict
            bar.update()
    bad = {path: err for path, err in verdicts.items() if err is not None}
    if cache is not None:
        # Keep other files' verdicts (a check of one split must not forget the others').
        failed = {os.path.abspath(p) for p in bad}
        ok = {path: key for path, key in known.items() if path not in failed}
        ok.update(
            (os.path.abspath(p), keys[p]) for p in paths if p not in bad and keys[p] is not None
        )
        try:
            with atomic_outputs([cache]) as (temp,):
                temp.write_text(json.dumps({"ok": ok}))
        except OutputError as err:
            warnings.warn(f"image check cache not saved: {err}", stacklevel=2)
    return bad


def channel_stats(
    paths: Sequence[str],
    to_uint8: Callable[[Image.Image], np.ndarray],
    threads: int | None = None,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and standard deviation of images, in [0, 1] pixel units.

    The statistics of all pixels of all images together (as CIFAR's usual
    values are computed), accumulated in float64. Files that cannot be decoded
    are left out (the data module reports them); unreadable ones raise.

    Args:
        paths: image files.
        to_uint8: turns a decoded RGB image into the ``(H, W, 3)`` uint8 array whose
            pixels count (e.g. resized and cropped to the network input).
        threads: decoding threads (PIL releases the GIL while decoding).

    Raises:
        CorruptImageError: no file could be decoded.
        DatasetPermissionError: a file cannot be read.
    """

    def sums(path: str) -> np.ndarray | None:
        try:
            pixels = to_uint8(load_rgb(path)).reshape(-1, 3).astype(np.float64) / 255.0
        except CorruptImageError:
            return None
        return np.concatenate([[pixels.shape[0]], pixels.sum(0), (pixels**2).sum(0)])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = [part for part in pool.map(sums, paths) if part is not None]
    if not parts:
        raise CorruptImageError(f"none of the {len(paths)} images can be decoded")
    total = np.sum(parts, axis=0)
    count, mean = total[0], total[1:4] / total[0]
    std = np.sqrt(np.maximum(total[4:7] / count - mean**2, 0.0))
    flat = [f"{'RGB'[c]} (std {std[c]:.2g})" for c in range(3) if std[c] < MIN_STD]
    if flat:  # dividing by ~0 would scale one-level noise to +-1e7, or by 0 to NaN
        warnings.warn(
            f"channel(s) {', '.join(flat)} of the {len(parts)} images are (nearly) constant; "
            f"their std is set to {MIN_STD:.4g}, one 8-bit level, so that normalising keeps "
            "them near 0 instead of dividing by ~0",
            stacklevel=2,
        )
        std = np.maximum(std, MIN_STD)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)  # type: ignore[return-value]
