"""Tests of the data modules (reaf_lightning.data) on tiny fake datasets in the real formats."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from fake_data import write_cifar100, write_corrupt_image, write_image_folder
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import DistributedSampler

from reaf_lightning.data import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CIFAR100DataModule,
    CIFAR100Dataset,
    CorruptImageError,
    CorruptImageWarning,
    DatasetLayoutError,
    DatasetNotFoundError,
    DeviceCIFARLoader,
    DigitsDataModule,
    ImageFolderDataModule,
    ImageNetDataModule,
    apply_crop_flip,
    default_eval_resize,
    normalize_uint8,
    sample_crop_flip_params,
    verify_images,
)


# ---------------------------------------------------------------------------------------------
# Digits
# ---------------------------------------------------------------------------------------------
def _bilinear_reference(img: np.ndarray, size: int) -> np.ndarray:
    """Plain-loop bilinear resize with half-pixel centres (align_corners=False semantics)."""
    h, w = img.shape
    out = np.zeros((size, size), dtype=np.float64)
    for i in range(size):
        for j in range(size):
            y = max((i + 0.5) * h / size - 0.5, 0.0)
            x = max((j + 0.5) * w / size - 0.5, 0.0)
            y0, x0 = min(int(y), h - 1), min(int(x), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = (
                img[y0, x0] * (1 - dy) * (1 - dx)
                + img[y0, x1] * (1 - dy) * dx
                + img[y1, x0] * dy * (1 - dx)
                + img[y1, x1] * dy * dx
            )
    return out


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images, d.target


@pytest.fixture(scope="module")
def digits_dm():
    dm = DigitsDataModule(batch_size=50)
    dm.setup("fit")
    return dm


def test_digits_sizes_and_disjoint_split(digits, digits_dm):
    _, target = digits
    n = len(target)
    n_val = math.ceil(0.2 * n)  # train_test_split rounds the test share up
    assert len(digits_dm.val_dataset) == n_val
    assert len(digits_dm.train_dataset) == n - n_val
    tr, va = set(digits_dm.train_indices.tolist()), set(digits_dm.val_indices.tolist())
    assert not tr & va and tr | va == set(range(n))
    assert digits_dm.num_classes == len(np.unique(target))


def test_digits_stratified(digits, digits_dm):
    _, target = digits
    val_counts = np.bincount(target[digits_dm.val_indices], minlength=10)
    all_counts = np.bincount(target, minlength=10)
    # every class in proportion: within one image of val_fraction * class size
    assert np.all(np.abs(val_counts - 0.2 * all_counts) <= 1.0), (val_counts, all_counts)


def test_digits_batches_are_3x32x32_with_correct_labels_and_pixels(digits, digits_dm):
    images, target = digits
    x, y = next(iter(digits_dm.val_dataloader()))
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # the val loader is unshuffled, in sorted index order
    idx = digits_dm.val_indices[:50]
    assert torch.equal(y, torch.from_numpy(target[idx]))
    mean, std = digits_dm.mean, digits_dm.std
    for k in (0, 7, 49):
        raw = x[k] * std[0] + mean[0]  # un-normalise
        assert torch.equal(raw[0], raw[1]) and torch.equal(raw[1], raw[2])
        ref = np.clip(_bilinear_reference(images[idx[k]] / 16.0, 32), 0.0, 1.0)
        np.testing.assert_allclose(raw[0].numpy(), ref, atol=1e-5)


def test_digits_normalisation_uses_train_split_stats(digits_dm):
    # normalised train split has mean 0 / std 1 exactly when the stats come from it
    xs = torch.cat([x for x, _ in digits_dm.train_dataloader()])
    assert abs(float(xs.mean())) < 1e-4
    assert abs(float(xs.std()) - 1.0) < 1e-3
    # the stats are in [0, 1] pixel units and identical across the replicated channels
    assert 0.0 < digits_dm.mean[0] < 1.0 and digits_dm.mean[0] == digits_dm.mean[2]


def test_digits_deterministic_and_seed_dependent():
    a, b, c = DigitsDataModule(seed=3), DigitsDataModule(seed=3), DigitsDataModule(seed=4)
    for dm in (a, b, c):
        dm.setup("fit")
    assert np.array_equal(a.val_indices, b.val_indices)
    assert torch.equal(a.train_dataset.tensors[0], b.train_dataset.tensors[0])
    assert not np.array_equal(a.val_indices, c.val_indices)


def test_digits_augment_is_a_shift_of_the_source(digits_dm):
    dm = DigitsDataModule(augment=True)
    dm.setup("fit")
    src = digits_dm.train_dataset.tensors[0]
    fill = -dm.mean[0] / dm.std[0]
    shift = 2
    for i in (0, 5):
        out, label = dm.train_dataset[i]
        assert int(label) == int(digits_dm.train_dataset.tensors[1][i])
        padded = torch.nn.functional.pad(src[i] - fill, (shift,) * 4) + fill
        matches = [
            torch.allclose(out, padded[:, oy : oy + 32, ox : ox + 32], atol=1e-6)
            for oy in range(2 * shift + 1)
            for ox in range(2 * shift + 1)
        ]
        assert any(matches)


@pytest.mark.parametrize(
    "kwargs", [{"batch_size": 0}, {"val_fraction": 1.0}, {"image_size": -1}, {"num_workers": -2}]
)
def test_digits_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DigitsDataModule(**kwargs)


# ---------------------------------------------------------------------------------------------
# CIFAR-100 (CPU DataLoader path)
# ---------------------------------------------------------------------------------------------
def _unnormalise_to_uint8(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x * s + m).mul(255).round().clamp(0, 255).to(torch.uint8)


def _row_to_image(row: np.ndarray) -> np.ndarray:
    """Independent decoding of one CIFAR row: 1024 R, then 1024 G, then 1024 B, row-major."""
    img = np.zeros((3, 32, 32), dtype=np.uint8)
    for c in range(3):
        for i in range(32):
            for j in range(32):
                img[c, i, j] = row[c * 1024 + i * 32 + j]
    return img


@pytest.fixture()
def cifar_root(tmp_path):
    written = write_cifar100(tmp_path / "cifar", n_train=40, n_test=24, seed=1)
    return tmp_path / "cifar", written


def test_cifar_reads_pickles_shapes_labels_and_pixels(cifar_root):
    root, written = cifar_root
    dm = CIFAR100DataModule(root=str(root), batch_size=8, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 100
    assert dm.mean == (0.5071, 0.4865, 0.4409) and dm.std == (0.2673, 0.2564, 0.2762)
    assert dm.classes[:2] == ["class_000", "class_001"]
    # validation is the test set, unshuffled
    xs, ys = zip(*dm.val_dataloader(), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (24, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == written["test"][b"fine_labels"]
    pixels = _unnormalise_to_uint8(x, dm.mean, dm.std)
    for k in (0, 13, 23):
        assert np.array_equal(pixels[k].numpy(), _row_to_image(written["test"][b"data"][k]))
    xt, yt = next(iter(dm.train_dataloader()))
    assert xt.shape == (8, 3, 32, 32) and yt.shape == (8,)
    assert set(yt.tolist()) <= set(written["train"][b"fine_labels"])


def test_cifar_val_split_fraction_holds_out_train_images(cifar_root):
    root, written = cifar_root
    dm = CIFAR100DataModule(root=str(root), batch_size=64, num_workers=0, val_split=0.25)
    dm.setup("fit")
    n_val = len(dm.dataset("val"))
    assert n_val == 10 and len(dm.dataset("train")) == 30
    val_pixels = _unnormalise_to_uint8(
        torch.stack([dm.dataset("val")[i][0] for i in range(n_val)]), dm.mean, dm.std
    )
    train_rows = {bytes(r) for r in written["train"][b"data"]}
    assert all(bytes(p.numpy().reshape(-1)) in train_rows for p in val_pixels)
    assert len(dm.dataset("test")) == 24


def test_cifar_missing_root_is_one_clear_error(tmp_path):
    dm = CIFAR100DataModule(root=str(tmp_path / "nowhere"), num_workers=0)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "cifar-100-python" in msg
    assert "download=true" in msg and "\n" not in msg
    with pytest.raises(DatasetNotFoundError):
        dm.setup("fit")


def test_cifar_missing_batch_file_is_named(cifar_root):
    root, _ = cifar_root
    (root / "cifar-100-python" / "train").unlink()
    dm = CIFAR100DataModule(root=str(root), num_workers=0)
    with pytest.raises(DatasetNotFoundError, match="missing") as err:
        dm.setup("fit")
    assert str(root / "cifar-100-python" / "train") in str(err.value)
    assert str(root / "cifar-100-python" / "test") not in str(err.value)


def test_cifar_damaged_pickle_is_named(cifar_root):
    root, _ = cifar_root
    (root / "cifar-100-python" / "test").write_bytes(b"garbage")
    with pytest.raises(DatasetLayoutError, match="cifar-100-python/test"):
        CIFAR100DataModule(root=str(root), num_workers=0).setup("fit")


def test_cifar_download_offline_is_clear(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    dm = CIFAR100DataModule(root=str(tmp_path / "c"), download=True, num_workers=0)
    with pytest.raises(DatasetNotFoundError, match="downloading CIFAR-100 .* failed"):
        dm.prepare_data()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"val_split": "val"},
        {"val_split": 1.5},
        {"batch_size": 0},
        {"mean": (0.5, 0.5)},
        {"std": (0.2, 0.0, 0.2)},
    ],
)
def test_cifar_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CIFAR100DataModule(**kwargs)


# ---------------------------------------------------------------------------------------------
# Batched crop/flip and the device-resident loader (run on CPU tensors here)
# ---------------------------------------------------------------------------------------------
def _all_crop_flips(img_u8: torch.Tensor, padding: int = 4) -> list[torch.Tensor]:
    """Every crop/flip torchvision's RandomCrop(32, padding) + RandomHorizontalFlip can output."""
    padded = TF.pad(img_u8, [padding])
    outs = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = TF.crop(padded, top, left, 32, 32)
            outs += [crop, TF.horizontal_flip(crop)]
    return outs


def test_apply_crop_flip_matches_torchvision_per_image():
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=gen)
    oy, ox, flips = sample_crop_flip_params(12, 4, True, generator=gen)
    out = apply_crop_flip(imgs, oy, ox, flips, 4)
    for b in range(12):
        ref = TF.crop(TF.pad(imgs[b], [4]), int(oy[b]), int(ox[b]), 32, 32)
        if flips[b]:
            ref = TF.horizontal_flip(ref)
        assert torch.equal(out[b], ref), b


def test_crop_flip_params_are_uniform():
    oy, ox, flips = sample_crop_flip_params(
        36_000, 4, True, generator=torch.Generator().manual_seed(1)
    )
    counts = torch.bincount(oy * 9 + ox, minlength=81).float()
    assert counts.numel() == 81 and counts.min() > 0
    expected = 36_000 / 81
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 160  # 80 degrees of freedom; p < 1e-7 beyond this
    assert 0.48 < flips.float().mean() < 0.52
    _, _, none = sample_crop_flip_params(100, 4, False)
    assert not none.any()


def _device_loader(images, labels, **kw):
    kw.setdefault("batch_size", 5)
    return DeviceCIFARLoader(images, labels, mean=CIFAR100_MEAN, std=CIFAR100_STD, **kw)


def test_device_loader_without_augmentation_equals_plain_path(cifar_root):
    root, _ = cifar_root
    dm = CIFAR100DataModule(root=str(root), batch_size=7, num_workers=0, augment=False)
    dm.setup("fit")
    ds = dm.dataset("train")
    ref_x = torch.stack([ds[i][0] for i in range(len(ds))])
    ref_y = torch.tensor([ds[i][1] for i in range(len(ds))])
    loader = _device_loader(ds.images, ds.labels, batch_size=7, augment=False, shuffle=False)
    got_x, got_y = (torch.cat(t) for t in zip(*loader, strict=True))
    assert torch.equal(got_x, ref_x) and torch.equal(got_y, ref_y)
    # same through the data module switch
    dm_gpu = CIFAR100DataModule(root=str(root), batch_size=7, num_workers=0, gpu_augment=True)
    dm_gpu.setup("fit")
    vx = torch.cat([x for x, _ in dm_gpu.val_dataloader()])
    vds = dm.dataset("val")
    assert torch.equal(vx, torch.stack([vds[i][0] for i in range(len(vds))]))


@pytest.mark.parametrize("path", ["device", "dataloader"])
def test_augmented_images_are_crop_flips_of_their_source(path):
    gen = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=gen)
    ids = torch.arange(6)  # label = source index, so shuffled batches can be traced
    if path == "device":
        batches = list(_device_loader(images, ids, batch_size=4, seed=3))
        xs, ys = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    else:
        ds = CIFAR100Dataset(images, ids, CIFAR100_MEAN, CIFAR100_STD, augment=True)
        xs = torch.stack([ds[i][0] for i in range(6)])
        ys = ids
    assert sorted(ys.tolist()) == list(range(6))
    for x, src in zip(xs, ys, strict=True):
        candidates = torch.stack(_all_crop_flips(images[int(src)]))
        normed = normalize_uint8(candidates, CIFAR100_MEAN, CIFAR100_STD)
        assert any(torch.equal(x, c) for c in normed)


def test_device_loader_shards_by_rank_with_epoch_permutation():
    n, world = 11, 2
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    ids = torch.arange(n)
    seen = {}
    for epoch in (0, 1):
        for rank in range(world):
            loader = _device_loader(images, ids, batch_size=4, rank=rank, world_size=world)
            loader.set_epoch(epoch)
            assert len(loader) == 2  # ceil(ceil(11 / 2) / 4)
            seen[epoch, rank] = torch.cat([y for _, y in loader]).tolist()
        a, b = seen[epoch, 0], seen[epoch, 1]
        assert len(a) == len(b) == 6  # equal shards: 11 padded to 12
        assert set(a) | set(b) == set(range(n))
        assert len(set(a) & set(b)) <= 1  # only the padding sample repeats
    assert seen[0, 0] != seen[1, 0]  # new permutation each epoch
    # reproducible
    again = _device_loader(images, ids, batch_size=4, rank=1, world_size=world)
    again.set_epoch(1)
    assert torch.cat([y for _, y in again]).tolist() == seen[1, 1]
    with pytest.raises(ValueError, match="rank"):
        _device_loader(images, ids, rank=2, world_size=2)


# ---------------------------------------------------------------------------------------------
# ImageFolder / ImageNet
# ---------------------------------------------------------------------------------------------
def _folder_dm(root, **kw):
    kw.setdefault("image_size", 32)
    kw.setdefault("batch_size", 4)
    kw.setdefault("num_workers", 0)
    kw.setdefault("verify_cache", None)
    return ImageFolderDataModule(str(root), **kw)


def test_image_folder_labels_follow_torchvision_imagefolder(tmp_path):
    classes = ("zebra", "ant", "moth")
    write_image_folder(tmp_path, classes=classes, n_per_class=3, size=(48, 40))
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
    assert names[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]


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
# Real Lightning Trainer: epochs, and DDP sharding with 2 CPU processes (gloo)
# ---------------------------------------------------------------------------------------------
class _SeenRecorder(pl.LightningModule):
    """Linear classifier that records which samples (labels are unique ids) each rank sees."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.lin = torch.nn.Linear(3 * 32 * 32, 100)
        self.seen: dict[str, list[int]] = {}
        self.loader_epochs: list[int] = []

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        if isinstance(loader, DeviceCIFARLoader):
            self.loader_epochs.append(loader.epoch)

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        self.seen.setdefault(f"train{self.current_epoch}", []).extend(y.tolist())
        return torch.nn.functional.cross_entropy(self.lin(x.flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        self.seen.setdefault(f"val{self.current_epoch}", []).extend(batch[1].tolist())

    def on_fit_end(self) -> None:
        path = Path(self.out_dir) / f"rank{self.global_rank}.json"
        path.write_text(json.dumps({"seen": self.seen, "loader_epochs": self.loader_epochs}))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(root, out_dir, devices: int, gpu_augment: bool) -> list[dict]:
    out_dir.mkdir()
    dm = CIFAR100DataModule(root=str(root), batch_size=4, num_workers=0, gpu_augment=gpu_augment)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        # fork: no re-import of the test module in the children (spawn costs ~40 s on 2 cores)
        strategy="ddp_fork" if devices > 1 else "auto",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(_SeenRecorder(str(out_dir)), datamodule=dm)
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(devices)]


def test_trainer_single_process_device_loader_follows_epochs(cifar_root, tmp_path):
    root, written = cifar_root
    (rank0,) = _fit(root, tmp_path / "out", devices=1, gpu_augment=True)
    assert rank0["loader_epochs"] == [0, 1]  # Lightning called set_epoch via .sampler
    ids = sorted(written["train"][b"fine_labels"])
    assert sorted(rank0["seen"]["train0"]) == sorted(rank0["seen"]["train1"]) == ids
    assert rank0["seen"]["train0"] != rank0["seen"]["train1"]  # reshuffled
    assert rank0["seen"]["val0"] == written["test"][b"fine_labels"]


@pytest.mark.slow
@pytest.mark.parametrize("gpu_augment", [False, True], ids=["dataloader", "device"])
def test_ddp_two_processes_shard_like_lightnings_sampler(tmp_path, monkeypatch, gpu_augment):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    root = tmp_path / "cifar"
    written = write_cifar100(root, n_train=22, n_test=10, seed=2)  # 22 ids: 11 per rank
    ranks = _fit(root, tmp_path / "out", devices=2, gpu_augment=gpu_augment)
    ids = written["train"][b"fine_labels"]  # unique, so a label identifies its image
    for epoch in (0, 1):
        a, b = (set(r["seen"][f"train{epoch}"]) for r in ranks)
        assert len(ranks[0]["seen"][f"train{epoch}"]) == 11 and not a & b and a | b == set(ids)
        for rank in (0, 1):
            # what Lightning's injected DistributedSampler (seed 0) would give this rank
            ref = DistributedSampler(range(22), num_replicas=2, rank=rank, shuffle=True, seed=0)
            ref.set_epoch(epoch)
            assert ranks[rank]["seen"][f"train{epoch}"] == [ids[i] for i in ref]
            assert ranks[rank]["loader_epochs"] == ([0, 1] if gpu_augment else [])
    assert ranks[0]["seen"]["train0"] != ranks[0]["seen"]["train1"]
    val = written["test"][b"fine_labels"]
    assert ranks[0]["seen"]["val0"] == val[0::2] and ranks[1]["seen"]["val0"] == val[1::2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_loader_on_cuda_matches_cpu_reference():
    gen = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=gen)
    ids = torch.arange(10)
    plain = _device_loader(images, ids, augment=False, shuffle=False, device="cuda")
    x, y = (torch.cat(t) for t in zip(*plain, strict=True))
    assert x.is_cuda and torch.equal(y.cpu(), ids)
    torch.testing.assert_close(x.cpu(), normalize_uint8(images, CIFAR100_MEAN, CIFAR100_STD))
    aug = _device_loader(images, ids, batch_size=10, device="cuda")
    ((xa, ya),) = list(aug)
    for out, src in zip(xa.cpu(), ya.cpu(), strict=True):
        normed = normalize_uint8(
            torch.stack(_all_crop_flips(images[int(src)])), CIFAR100_MEAN, CIFAR100_STD
        )
        assert any(torch.allclose(out, c) for c in normed)


def test_benchmark_script_runs(capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cifar_loader.py"
    spec = importlib.util.spec_from_file_location("bench_cifar_loader", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(
        [
            "--device",
            "cpu",
            "--n-images",
            "300",
            "--num-workers",
            "0",
            "--seconds",
            "0.1",
            "--batch-size",
            "32",
        ]
    )
    assert set(res) == {"dataloader", "device"} and min(res.values()) > 0
    assert "ratio:" in capsys.readouterr().out
