"""Tests of the image-folder data modules and image decoding (reaf_lightning.data.images)
on small trees of real PNG/JPEG/TIFF/PGM/BMP files written by the tests."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torchvision
from fake_data import write_corrupt_image, write_image_folder
from PIL import Image
from torch.utils.data import DataLoader

from reaf_lightning.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CorruptImageError,
    CorruptImageWarning,
    DatasetLayoutError,
    DatasetNotFoundError,
    DatasetPermissionError,
    ImageFileDataset,
    ImageFolderDataModule,
    ImageNetDataModule,
    default_eval_resize,
    load_rgb,
    verify_images,
)
from reaf_lightning.errors import ConfigError, DataError


def _folder_dm(root, **kw):
    kw.setdefault("image_size", 32)
    kw.setdefault("batch_size", 4)
    kw.setdefault("num_workers", 0)
    kw.setdefault("verify_cache", None)
    return ImageFolderDataModule(str(root), **kw)


def test_image_folder_labels_follow_torchvision_imagefolder(tmp_path):
    classes = ("zebra", "ant", "moth")
    write_image_folder(tmp_path, classes=classes, n_per_class=3, size=(48, 40))
    # nested folders and a linked folder are walked as ImageFolder walks them
    write_image_folder(tmp_path / "extra", classes=("deep",), n_per_class=2, splits=("x",))
    shutil.move(tmp_path / "extra" / "x" / "deep", tmp_path / "train" / "ant" / "deep")
    (tmp_path / "val" / "moth" / "linked").symlink_to(tmp_path / "train" / "ant" / "deep")
    dm = _folder_dm(tmp_path)
    assert dm.num_classes == 3 and dm.classes == sorted(classes)
    dm.setup("fit")
    for split in ("train", "val"):
        ref = torchvision.datasets.ImageFolder(str(tmp_path / split))
        got = [(str(p), y) for p, y in getattr(dm, f"{split}_dataset").samples]
        assert got == [(str(p), y) for p, y in ref.samples]
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == [s[1] for s in dm.val_dataset.samples[:4]]
    xt, _ = next(iter(dm.train_dataloader()))
    assert xt.shape == (4, 3, 32, 32)


def test_image_folder_eval_transform_is_resize_then_centre_crop(tmp_path):
    written = write_image_folder(tmp_path, classes=("a", "b"), n_per_class=1, size=(100, 80))
    dm = _folder_dm(tmp_path, image_size=64, resize_size=72, mean=(0, 0, 0), std=(1, 1, 1))
    dm.setup("fit")
    path, label = written["val"][0]
    x, y = dm.val_dataset[0]
    assert y == label
    # independent reference with PIL: 100 x 80 -> shorter side 72 -> 90 x 72, centre 64 x 64
    img = Image.open(path).convert("RGB").resize((90, 72), Image.Resampling.BILINEAR)
    ref = np.asarray(img.crop((13, 4, 77, 68)), dtype=np.float32).transpose(2, 0, 1) / 255
    torch.testing.assert_close(x, torch.from_numpy(ref), atol=1e-6, rtol=0)
    # small images: eval resize defaults to the image size itself; larger: /0.875
    assert default_eval_resize(32) == 32 and default_eval_resize(224) == 256


def test_imagenet_module_uses_paper_transforms_and_reads_jpeg(tmp_path):
    write_image_folder(tmp_path, classes=("n01", "n02"), n_per_class=2, size=260, ext=".JPEG")
    dm = ImageNetDataModule(str(tmp_path), batch_size=2, num_workers=0, verify_cache=None)
    assert dm.num_classes == 2 and dm.image_size == 224 and dm.resize_size == 256
    assert dm.mean == IMAGENET_MEAN and dm.std == IMAGENET_STD
    dm.setup("fit")
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 224, 224) and y.tolist() == [0, 0]
    names = [type(t).__name__ for t in dm.train_transform().transforms]
    assert names[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]  # ours, the default
    paper = ImageNetDataModule(str(tmp_path), augmentation="scale_jitter", verify_cache=None)
    names = [type(t).__name__ for t in paper.train_transform().transforms]
    assert names[:3] == ["RandomResize", "RandomCrop", "RandomHorizontalFlip"]
    assert paper.scale_jitter_range == (256, 480)


def test_image_folder_missing_root_and_split(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist") as err:
        _folder_dm(tmp_path / "nope").setup("fit")
    assert str(tmp_path / "nope") in str(err.value)
    write_image_folder(tmp_path / "d", splits=("train",))
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "d" / "val")):
        _ = _folder_dm(tmp_path / "d").num_classes


def test_image_folder_empty_class_folder_is_named(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), n_per_class=1)
    (tmp_path / "val" / "c").mkdir()
    (tmp_path / "train" / "c").mkdir()
    (tmp_path / "train" / "c" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetLayoutError, match="without any image") as err:
        _folder_dm(tmp_path).setup("fit")
    assert str(tmp_path / "train" / "c") in str(err.value)
    assert str(tmp_path / "val" / "c") in str(err.value)


def test_image_folder_mismatched_classes_are_named(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b", "c"), splits=("train",), n_per_class=1)
    write_image_folder(tmp_path, classes=("a", "b", "d"), splits=("val",), n_per_class=1)
    with pytest.raises(DatasetLayoutError, match=r"only in train: \['c'\]; only in val: \['d'\]"):
        _ = _folder_dm(tmp_path).num_classes


def test_image_folder_flat_val_gets_a_hint(tmp_path):
    write_image_folder(tmp_path, classes=("a",), splits=("train",), n_per_class=1)
    (tmp_path / "val").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetLayoutError, match="1 loose images"):
        _folder_dm(tmp_path).setup("fit")


def _write_with_corrupt(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), n_per_class=2, size=36)
    bad_train = write_corrupt_image(tmp_path / "train" / "a" / "a_9.png")
    bad_val = write_corrupt_image(tmp_path / "val" / "b" / "b_5.JPEG")
    return bad_train, bad_val


def test_corrupt_image_skipped_with_warning_naming_file_and_count(tmp_path):
    bad_train, _ = _write_with_corrupt(tmp_path)
    dm = _folder_dm(tmp_path, resize_size=32)
    dm.setup("fit")  # skip mode: no up-front verification, set-up succeeds
    ds = dm.train_dataset
    # replace the random training transform by the deterministic eval one for comparison
    ds.transform = dm.eval_transform()
    bad_index = [p for p, _ in ds.samples].index(str(bad_train))
    with pytest.warns(CorruptImageWarning, match="a_9.png") as rec:
        x, y = ds[bad_index]
    assert "1 unreadable file(s) skipped" in str(rec[0].message)
    nxt = ds[bad_index + 1]
    assert torch.equal(x, nxt[0]) and y == nxt[1]  # substitute = next readable sample
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same file warns only once
        ds[bad_index]
    dm_val = _folder_dm(tmp_path, batch_size=5)
    dm_val.setup("validate")
    with pytest.warns(CorruptImageWarning, match="b_5.JPEG.*1 unreadable"):
        ((x, y),) = list(dm_val.val_dataloader())
    assert x.shape == (5, 3, 32, 32)
    assert y.tolist() == [0, 0, 1, 1, 0]  # the corrupt last file is replaced by the first one


def test_corrupt_image_error_mode_refuses_at_setup_naming_every_file(tmp_path):
    bad_train, bad_val = _write_with_corrupt(tmp_path)
    cache = tmp_path / "cache.json"
    dm = _folder_dm(tmp_path, on_corrupt="error", verify_cache=str(cache))
    with pytest.raises(CorruptImageError, match="2 corrupt image") as err:
        dm.setup("fit")
    assert str(bad_train) in str(err.value) and str(bad_val) in str(err.value)
    # after removing them, set-up passes and the cache remembers the good files
    bad_train.unlink()
    bad_val.unlink()
    _folder_dm(tmp_path, on_corrupt="error", verify_cache=str(cache)).setup("fit")
    assert len(json.loads(cache.read_text())["ok"]) == 8


def test_verify_cache_skips_unchanged_files_and_rechecks_changed_ones(tmp_path):
    written = write_image_folder(tmp_path, classes=("a",), n_per_class=2, splits=("train",))
    paths = [str(p) for p, _ in written["train"]]
    cache = tmp_path / "v.json"
    assert verify_images(paths, cache_file=cache) == {}
    write_corrupt_image(paths[0])  # content (and size) changes -> re-verified
    assert list(verify_images(paths, cache_file=cache)) == [paths[0]]


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
        _folder_dm(tmp_path, on_corrupt="error").setup("fit")
    assert str(bad) in str(err.value) and "truncated" in str(err.value)
    dm = _folder_dm(tmp_path)  # skip mode: the same file is skipped when drawn
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
    kind, message = _unprivileged(lambda: _folder_dm(root, on_corrupt="error").setup("fit"))
    assert kind == "DatasetPermissionError" and "permission denied" in message
    assert str(locked) in message and "corrupt" not in message

    def read_in_skip_mode() -> None:
        dm = _folder_dm(root)
        dm.setup("fit")
        dm.train_dataset[[p for p, _ in dm.train_dataset.samples].index(str(locked))]

    kind, message = _unprivileged(read_in_skip_mode)  # never skipped silently
    assert kind == "DatasetPermissionError" and str(locked) in message


def test_unreadable_class_folder_is_one_line(world_readable_tree):
    root = world_readable_tree
    (root / "val" / "a").chmod(0o000)
    kind, message = _unprivileged(lambda: _folder_dm(root).setup("fit"))
    assert kind == "DatasetPermissionError"
    assert message == f"cannot list folder '{root / 'val' / 'a'}': permission denied"


def test_symlink_loop_is_one_line(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), n_per_class=1, size=16)
    (tmp_path / "train" / "a" / "again").symlink_to(tmp_path / "train")
    with pytest.raises(DatasetLayoutError, match="symlink loop") as err:
        _folder_dm(tmp_path).setup("fit")
    assert f"'{tmp_path / 'train' / 'a' / 'again'}' leads back" in str(err.value)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# The paper's scale augmentation, predictions, workers, checkpoints
# ---------------------------------------------------------------------------------------------
def test_scale_jitter_resizes_the_shorter_side_within_the_range_then_crops(tmp_path):
    write_image_folder(tmp_path, classes=("a",), n_per_class=1, size=(20, 16), splits=("train",))
    write_image_folder(tmp_path, classes=("a",), n_per_class=1, size=(20, 16), splits=("val",))
    dm = _folder_dm(
        tmp_path, image_size=8, augmentation="scale_jitter", scale_jitter_range=(8, 12),
        mean=(0, 0, 0), std=(1, 1, 1),
    )  # fmt: skip
    dm.setup("fit")
    source = load_rgb(dm.train_dataset.samples[0][0])
    windows = {}  # shorter side -> every 8x8 crop (and its mirror) of the resized image, uint8
    for side in range(8, 15):  # 13 and 14 would be outside the range
        resized = source.resize((int(side * 20 / 16), side), Image.Resampling.BILINEAR)
        array = torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)
        crops = array.unfold(1, 8, 1).unfold(2, 8, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 8, 8)
        windows[side] = torch.cat([crops, crops.flip(-1)])
    torch.manual_seed(0)
    sides = []
    for _ in range(40):
        x, _ = dm.train_dataset[0]
        pixels = (x * 255).round().to(torch.uint8)
        sides += [s for s, w in windows.items() if (w == pixels).flatten(1).all(1).any()]
    assert len(sides) == 40 and set(sides) == set(range(8, 13))  # both ends inclusive
    with pytest.raises(ConfigError, match="scale_jitter_range"):
        _folder_dm(tmp_path, image_size=16, augmentation="scale_jitter", scale_jitter_range=(8, 12))


def test_predict_samples_name_every_prediction_in_loader_order(tmp_path):
    write_image_folder(tmp_path, classes=("b", "a", "c"), n_per_class=3, size=16)
    dm = _folder_dm(tmp_path, batch_size=4)
    dm.setup("predict")
    reference = torchvision.datasets.ImageFolder(str(tmp_path / "val")).samples
    assert dm.predict_dataset.samples == [(p, y) for p, y in reference]
    labels = torch.cat([y for _, y in dm.predict_dataloader()]).tolist()
    assert labels == [y for _, y in dm.predict_dataset.samples]


def test_data_errors_keep_their_type_across_dataloader_workers(tmp_path):
    for error in (CorruptImageError, DatasetPermissionError, DatasetNotFoundError):
        copy = pickle.loads(pickle.dumps(error("one line naming '/x.png'")))
        assert type(copy) is error and str(copy) == "one line naming '/x.png'"
        assert isinstance(copy, DataError)
    bad = write_corrupt_image(tmp_path / "bad.png")
    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4)).save(good)
    dataset = ImageFileDataset([(str(good), 0)] * 3 + [(str(bad), 1)], np.asarray, "error")
    loader = DataLoader(dataset, batch_size=1, num_workers=2)
    with pytest.raises(CorruptImageError, match="bad.png"):
        list(loader)


def test_settings_are_saved_in_the_checkpoint(tmp_path):
    write_image_folder(tmp_path / "data", classes=("a", "b"), n_per_class=2, size=16)
    dm = _folder_dm(tmp_path / "data", image_size=8, mean=(0.1, 0.2, 0.3), resize_size=10)

    class Linear(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3 * 8 * 8, 2)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.fc(batch[0].flatten(1)), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(Linear(), datamodule=dm)
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    saved = torch.load(tmp_path / "x.ckpt", weights_only=False)["datamodule_hyper_parameters"]
    assert (saved["image_size"], saved["resize_size"], saved["mean"]) == (8, 10, (0.1, 0.2, 0.3))
    assert saved["augmentation"] == "random_resized_crop" and saved["on_corrupt"] == "skip"
