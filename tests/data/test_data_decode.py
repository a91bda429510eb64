"""Tests of image decoding and set-up checks (reaf_lightning.data.images): every PIL mode,
truncated files, permissions, symlink loops and the verdict cache, on real files."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers.fake_data import folder_datamodule, write_image_folder
from PIL import Image

from reaf_lightning.data import (
    CorruptImageError,
    CorruptImageWarning,
    DatasetLayoutError,
    load_rgb,
    verify_images,
)

# ---------------------------------------------------------------------------------------------
# Every PIL mode: correct 8-bit RGB, or refused naming the file and the mode
# ---------------------------------------------------------------------------------------------
_RNG = np.random.default_rng(7)
_H, _W = 6, 7


def _u8(*shape):
    return _RNG.integers(0, 256, size=(_H, _W, *shape), dtype=np.uint8)


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2)


def _case_palette():
    index = _RNG.integers(0, 4, size=(_H, _W), dtype=np.uint8)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.reshape(-1).tolist())
    image.info["transparency"] = 3  # colour 3 is transparent: its colour is kept, alpha dropped
    return image, palette[index], "P"


def _case_cmyk():
    cmyk = _u8(4)
    ink = (255 - cmyk[..., :3].astype(float)) * (255 - cmyk[..., 3:].astype(float)) / 255
    return Image.fromarray(cmyk, "CMYK"), np.rint(ink), "CMYK"


def _case_ycbcr():
    ycc = _u8(3).astype(float)
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128  # JFIF (ITU-R BT.601, full range)
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return Image.fromarray(ycc.astype(np.uint8), "YCbCr"), np.clip(np.rint(rgb), 0, 255), "YCbCr"


def _case_16bit(mode: str):
    values = _RNG.integers(0, 65536, size=(_H, _W)).astype(np.uint16)
    values[0, :2] = (0, 65535)
    expected = _grey(np.rint(values.astype(float) * 255 / 65535))
    image = Image.fromarray(values.astype(np.int32) if mode == "I" else values)
    return image, expected, mode


def _case_float():
    values = _RNG.random((_H, _W), dtype=np.float32)
    values[0, :2] = (0.0, 1.0)
    return Image.fromarray(values), _grey(np.rint(values.astype(float) * 255)), "F"


_MODES = {  # name: (file suffix, writer returning (image, expected RGB, mode PIL reads back))
    "1.png": lambda: (lambda b: (Image.fromarray(b), _grey(np.where(b, 255, 0)), "1"))(
        _RNG.random((_H, _W)) > 0.5
    ),
    "L.png": lambda: (lambda g: (Image.fromarray(g), _grey(g), "L"))(_u8()),
    "LA.png": lambda: (lambda a: (Image.fromarray(a, "LA"), _grey(a[..., 0]), "LA"))(_u8(2)),
    "P-transparent.png": _case_palette,
    "RGBA.png": lambda: (lambda a: (Image.fromarray(a, "RGBA"), a[..., :3], "RGBA"))(_u8(4)),
    "RGB.bmp": lambda: (lambda a: (Image.fromarray(a), a, "RGB"))(_u8(3)),
    "CMYK.tiff": _case_cmyk,
    "YCbCr.tiff": _case_ycbcr,
    "16bit.png": lambda: _case_16bit("I;16"),
    "16bit.tiff": lambda: _case_16bit("I;16"),
    "16bit.pgm": lambda: (lambda c: (c[0], c[1], "I"))(_case_16bit("I;16")),
    "32bit-int.tiff": lambda: _case_16bit("I"),
    "float.tiff": _case_float,
}


@pytest.mark.parametrize("name", list(_MODES))
def test_every_mode_decodes_to_the_expected_8bit_rgb(tmp_path, name):
    image, expected, mode = _MODES[name]()
    path = tmp_path / name
    image.save(path)
    with Image.open(path) as reread:
        assert reread.mode == mode  # the file really holds the mode under test
    got = np.asarray(load_rgb(str(path)), dtype=float)
    assert got.shape == (_H, _W, 3)
    tolerance = 1 if mode in ("CMYK", "YCbCr") else 0  # PIL's fixed-point colour conversions
    np.testing.assert_allclose(got, expected, atol=tolerance, rtol=0)


@pytest.mark.parametrize(
    ("mode", "make", "why"),
    [
        ("LAB", lambda: Image.fromarray(_u8(3), "LAB"), "no agreed 8-bit RGB"),
        ("I", lambda: Image.fromarray(np.full((_H, _W), 70_000, np.int32)), "70000"),
        ("F", lambda: Image.fromarray(np.full((_H, _W), 3.0, np.float32)), "[0, 1.0]"),
        ("F", lambda: Image.fromarray(np.full((_H, _W), np.nan, np.float32)), "NaN"),
    ],
)
def test_modes_without_a_meaning_are_refused_naming_file_and_mode(tmp_path, mode, make, why):
    path = tmp_path / "odd.tiff"
    make().save(path)
    with pytest.raises(CorruptImageError) as err:
        load_rgb(str(path))
    message = str(err.value)
    assert str(path) in message and f"mode {mode}" in message and why in message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------
# Set-up checks: truncated files, permissions, symlink loops, the verdict cache
# ---------------------------------------------------------------------------------------------
def _truncated_jpeg(tmp_path: Path) -> Path:
    write_image_folder(tmp_path, classes=("a", "b"), n_per_class=2, size=64, ext=".jpg")
    path = tmp_path / "train" / "b" / "b_1.jpg"
    path.write_bytes(path.read_bytes()[:-400])
    with Image.open(path) as image:
        image.verify()  # PIL's cheap check passes: only a real decode finds it
    return path


def test_truncated_jpeg_is_refused_at_setup_in_error_mode(tmp_path):
    bad = _truncated_jpeg(tmp_path)
    with pytest.raises(CorruptImageError, match=r"^1 corrupt image\(s\) of 8 under") as err:
        folder_datamodule(tmp_path, on_corrupt="error").setup("fit")
    assert str(bad) in str(err.value) and "truncated" in str(err.value)
    dm = folder_datamodule(tmp_path)  # skip mode: the same file is skipped when drawn
    dm.setup("fit")
    with pytest.warns(CorruptImageWarning, match="b_1.jpg"):
        dm.train_dataset[[p for p, _ in dm.train_dataset.samples].index(str(bad))]


def test_verdict_cache_is_used_while_size_and_mtime_are_unchanged(tmp_path):
    written = write_image_folder(tmp_path, classes=("a",), n_per_class=3, splits=("train",))
    paths = [str(p) for p, _ in written["train"]]
    cache = tmp_path / "verdicts.json"
    assert verify_images(paths, cache_file=cache) == {}
    info = os.stat(paths[1])
    Path(paths[1]).write_bytes(b"\0" * info.st_size)  # same size ...
    os.utime(paths[1], ns=(info.st_atime_ns, info.st_mtime_ns))  # ... and mtime: trusted
    assert verify_images(paths, cache_file=cache) == {}
    assert list(verify_images(paths, cache_file=None)) == [paths[1]]  # a real check finds it


@pytest.fixture
def world_readable_tree():
    """An image tree under a world-readable folder (pytest's tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="reaf-perm-"))
    root.chmod(0o755)
    write_image_folder(root, classes=("a", "b"), n_per_class=2, size=16)
    yield root
    for folder, _, _ in os.walk(root):
        os.chmod(folder, 0o755)
    shutil.rmtree(root)


def _unprivileged(body) -> tuple[str, str] | None:
    """Run ``body()`` in a forked child that cannot bypass file permissions (as root the
    child becomes 'nobody'); return the (type name, message) it raised, or None."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def child() -> None:
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            body()
            queue.put(None)
        except BaseException as err:  # report everything, the parent asserts on it
            queue.put((type(err).__name__, str(err)))

    process = context.Process(target=child)
    process.start()
    result = queue.get(timeout=120)
    process.join()
    return result


def test_unreadable_image_is_a_permission_problem_not_a_corrupt_image(world_readable_tree):
    root = world_readable_tree
    locked = root / "train" / "b" / "b_0.png"
    locked.chmod(0o000)
    kind, message = _unprivileged(lambda: folder_datamodule(root, on_corrupt="error").setup("fit"))
    assert kind == "DatasetPermissionError" and "permission denied" in message
    assert str(locked) in message and "corrupt" not in message

    def read_in_skip_mode() -> None:
        dm = folder_datamodule(root)
        dm.setup("fit")
        dm.train_dataset[[p for p, _ in dm.train_dataset.samples].index(str(locked))]

    kind, message = _unprivileged(read_in_skip_mode)  # never skipped silently
    assert kind == "DatasetPermissionError" and str(locked) in message


def test_unreadable_class_folder_is_one_line(world_readable_tree):
    root = world_readable_tree
    (root / "val" / "a").chmod(0o000)
    kind, message = _unprivileged(lambda: folder_datamodule(root).setup("fit"))
    assert kind == "DatasetPermissionError"
    assert message == f"cannot list folder '{root / 'val' / 'a'}': permission denied"


def test_symlink_loop_is_one_line(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), n_per_class=1, size=16)
    (tmp_path / "train" / "a" / "again").symlink_to(tmp_path / "train")
    with pytest.raises(DatasetLayoutError, match="symlink loop") as err:
        folder_datamodule(tmp_path).setup("fit")
    assert f"'{tmp_path / 'train' / 'a' / 'again'}' leads back" in str(err.value)
    assert "\n" not in str(err.value)
    (tmp_path / "train" / "a" / "again").unlink()
    (tmp_path / "train" / "a" / "self.png").symlink_to(tmp_path / "train" / "a" / "self.png")
    with pytest.raises(DatasetLayoutError, match="self.png': Too many levels of symbolic links"):
        folder_datamodule(tmp_path).setup("fit")
