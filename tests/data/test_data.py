"""Tests of the data modules (reaf_lightning.data) on tiny fake datasets in the real formats."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from helpers import REPO
from helpers.fake_data import write_cifar100
from torch.utils.data import DistributedSampler

from reaf_lightning.data import (
    CIFAR100,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR100DataModule,
    CIFARDataset,
    DatasetLayoutError,
    DatasetNotFoundError,
    apply_crop_flip,
    load_cifar_split,
    normalize_uint8,
    sample_crop_flip_params,
)
from reaf_lightning.errors import ConfigError


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
    # prediction is the test set in file order (validation: the same images, classes mixed)
    xs, ys = zip(*dm.predict_dataloader(), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (24, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == written["test"][b"fine_labels"]
    pixels = _unnormalise_to_uint8(x, dm.mean, dm.std)
    for k in (0, 13, 23):
        assert np.array_equal(pixels[k].numpy(), _row_to_image(written["test"][b"data"][k]))
    xt, yt = next(iter(dm.train_dataloader()))
    assert xt.shape == (8, 3, 32, 32) and yt.shape == (8,)
    assert set(yt.tolist()) <= set(written["train"][b"fine_labels"])


def test_cifar_reads_protocol_2_pickles_like_the_official_files(tmp_path):
    written = write_cifar100(tmp_path, n_train=4, n_test=3, protocol=2)
    test_file = tmp_path / "cifar-100-python" / "test"  # as numpy < 2 names its functions:
    test_file.write_bytes(test_file.read_bytes().replace(b"numpy._core.", b"numpy.core."))
    images, labels = load_cifar_split(tmp_path, "test", CIFAR100)
    assert labels.tolist() == written["test"][b"fine_labels"]
    assert np.array_equal(images[2], _row_to_image(written["test"][b"data"][2]))


def test_cifar_val_split_fraction_holds_out_train_images(cifar_root):
    root, written = cifar_root
    dm = CIFAR100DataModule(root=str(root), batch_size=64, num_workers=0, val_split=0.25)
    dm.setup("fit")
    n_val = len(dm.val_dataset)
    assert n_val == 10 and len(dm.train_dataset) == 30
    val_pixels = _unnormalise_to_uint8(
        torch.stack([dm.val_dataset[i][0] for i in range(n_val)]), dm.mean, dm.std
    )
    train_rows = {bytes(r) for r in written["train"][b"data"]}
    assert all(bytes(p.numpy().reshape(-1)) in train_rows for p in val_pixels)
    assert len(dm.test_dataset) == 24 and dm.predict_dataset is dm.test_dataset


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
    import torchvision.datasets.utils

    def offline(*args, **kwargs):  # the network, not the code under test, is replaced
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    dm = CIFAR100DataModule(root=str(tmp_path / "c"), download=True, num_workers=0)
    with pytest.raises(DatasetNotFoundError, match="downloading CIFAR-100 .* failed"):
        dm.prepare_data()


class _Payload:
    """Unpickling this runs ``os.system`` - what a crafted data file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_that_would_run_code_is_refused_without_running_it(cifar_root, tmp_path):
    root, written = cifar_root
    marker = tmp_path / "payload-ran"
    import pickle

    content = dict(written["train"])
    content[b"data"] = _Payload(marker)
    (root / "cifar-100-python" / "train").write_bytes(pickle.dumps(content))
    with pytest.raises(DatasetLayoutError, match="posix.system|os.system") as err:
        CIFAR100DataModule(root=str(root), num_workers=0).setup("fit")
    assert not marker.exists() and "cifar-100-python/train" in str(err.value)


def test_cifar_pickle_without_images_is_one_line(cifar_root):
    root, _ = cifar_root
    write_cifar100(root, n_train=0, n_test=4)
    with pytest.raises(DatasetLayoutError, match="holds no images") as err:
        CIFAR100DataModule(root=str(root), num_workers=0).setup("fit")
    assert "\n" not in str(err.value)


def test_cifar_hyperparameters_are_the_settings(cifar_root):
    root, _ = cifar_root
    dm = CIFAR100DataModule(root=str(root), batch_size=16, gpu_augment=True, mean=(0, 0, 0))
    assert dm.hparams["mean"] == (0, 0, 0) and dm.hparams["gpu_augment"] is True
    assert (dm.image_size, dm.num_classes, dm.std) == (32, 100, CIFAR100_STD)


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
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
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


def test_gpu_augment_without_augmentation_equals_cpu_path(cifar_root):
    root, _ = cifar_root
    cpu = CIFAR100DataModule(root=str(root), batch_size=7, num_workers=0, augment=False)
    dev = CIFAR100DataModule(
        root=str(root), batch_size=7, num_workers=0, augment=False, gpu_augment=True
    )
    for dm in (cpu, dev):
        dm.setup("fit")
    assert cpu.batch_augmentation is None and dev.batch_augmentation == dev.augment_batch
    ref = torch.stack([cpu.train_dataset[i][0] for i in range(len(cpu.train_dataset))])
    raw = torch.stack([dev.train_dataset[i][0] for i in range(len(dev.train_dataset))])
    assert raw.dtype == torch.uint8  # the loader only gathers; the device normalises
    assert torch.equal(dev.augment_batch(raw), ref)  # bit-identical arithmetic
    # evaluation batches are normalised by the loader on both paths (the hook skips them)
    vx = torch.cat([x for x, _ in dev.val_dataloader()])
    assert torch.equal(vx, torch.cat([x for x, _ in cpu.val_dataloader()]))


@pytest.mark.parametrize("path", ["device", "dataloader"])
def test_augmented_images_are_crop_flips_of_their_source(path):
    gen = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=gen)
    if path == "device":
        xs = CIFAR100DataModule(gpu_augment=True, seed=3).augment_batch(images)
    else:
        ds = CIFARDataset(images, torch.arange(6), CIFAR100_MEAN, CIFAR100_STD, augment=True)
        xs = torch.stack([ds[i][0] for i in range(6)])
    for x, src in zip(xs, images, strict=True):
        normed = normalize_uint8(torch.stack(_all_crop_flips(src)), CIFAR100_MEAN, CIFAR100_STD)
        assert any(torch.equal(x, c) for c in normed)


def test_device_draws_follow_the_seed():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a, b = (CIFAR100DataModule(gpu_augment=True, seed=5).augment_batch(images) for _ in range(2))
    c = CIFAR100DataModule(gpu_augment=True, seed=6).augment_batch(images)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------
# Real Lightning Trainer: epochs, and DDP sharding with 2 CPU processes (gloo)
# ---------------------------------------------------------------------------------------------
def _is_normalised_crop_flip(image: torch.Tensor, source: torch.Tensor) -> bool:
    """Whether ``image`` is one of the 162 normalised crops/flips of ``source`` (via unfold)."""
    windows = TF.pad(source, [4]).unfold(1, 32, 1).unfold(2, 32, 1)  # (3, 9, 9, 32, 32)
    windows = windows.permute(1, 2, 0, 3, 4).reshape(-1, 3, 32, 32)
    normed = normalize_uint8(torch.cat([windows, windows.flip(-1)]), CIFAR100_MEAN, CIFAR100_STD)
    return bool((normed == image).flatten(1).all(1).any())


class _SeenRecorder(pl.LightningModule):
    """Linear classifier that records which samples (labels are unique ids) each rank sees,
    and whether every training image is a crop/flip of its source (``sources[label]``)."""

    def __init__(self, out_dir: str, sources: torch.Tensor) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.sources = sources
        self.lin = torch.nn.Linear(3 * 32 * 32, 100)
        self.seen: dict[str, list[int]] = {}
        self.crops_ok: list[bool] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        self.seen.setdefault(f"train{self.current_epoch}", []).extend(y.tolist())
        for image, label in zip(x, y.tolist(), strict=True):
            self.crops_ok.append(_is_normalised_crop_flip(image, self.sources[label]))
        return torch.nn.functional.cross_entropy(self.lin(x.flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        self.seen.setdefault(f"val{self.current_epoch}", []).extend(batch[1].tolist())

    def on_fit_end(self) -> None:
        path = Path(self.out_dir) / f"rank{self.global_rank}.json"
        path.write_text(json.dumps({"seen": self.seen, "crops_ok": all(self.crops_ok)}))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(root, written, out_dir, devices: int, gpu_augment: bool) -> list[dict]:
    out_dir.mkdir()
    sources = torch.zeros(100, 3, 32, 32, dtype=torch.uint8)
    for row, label in zip(written["train"][b"data"], written["train"][b"fine_labels"]):
        sources[label] = torch.from_numpy(row.reshape(3, 32, 32))
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
    trainer.fit(_SeenRecorder(str(out_dir), sources), datamodule=dm)
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(devices)]


def test_trainer_applies_the_device_augmentation_to_training_batches_only(tmp_path):
    root = tmp_path / "cifar"
    written = write_cifar100(root, n_train=12, n_test=6, seed=4)
    (rank0,) = _fit(root, written, tmp_path / "out", devices=1, gpu_augment=True)
    assert rank0["crops_ok"]  # uint8 batches became normalised crops/flips on the "device"
    ids = sorted(written["train"][b"fine_labels"])
    assert sorted(rank0["seen"]["train0"]) == sorted(rank0["seen"]["train1"]) == ids
    assert rank0["seen"]["train0"] != rank0["seen"]["train1"]  # reshuffled
    # every label once: the class-mixed evaluation order is the labels' own order
    assert rank0["seen"]["val0"] == sorted(written["test"][b"fine_labels"])


@pytest.mark.slow
@pytest.mark.parametrize("gpu_augment", [False, True], ids=["dataloader", "device"])
def test_ddp_two_processes_shard_like_lightnings_sampler(tmp_path, monkeypatch, gpu_augment):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    root = tmp_path / "cifar"
    written = write_cifar100(root, n_train=22, n_test=10, seed=2)  # 22 ids: 11 per rank
    ranks = _fit(root, written, tmp_path / "out", devices=2, gpu_augment=gpu_augment)
    ids = written["train"][b"fine_labels"]  # unique, so a label identifies its image
    for epoch in (0, 1):
        a, b = (set(r["seen"][f"train{epoch}"]) for r in ranks)
        assert len(ranks[0]["seen"][f"train{epoch}"]) == 11 and not a & b and a | b == set(ids)
        for rank in (0, 1):
            # what Lightning's injected DistributedSampler (seed 0) would give this rank
            ref = DistributedSampler(range(22), num_replicas=2, rank=rank, shuffle=True, seed=0)
            ref.set_epoch(epoch)
            assert ranks[rank]["seen"][f"train{epoch}"] == [ids[i] for i in ref]
            assert ranks[rank]["crops_ok"]
    assert ranks[0]["seen"]["train0"] != ranks[0]["seen"]["train1"]
    # every label once, so the class-mixed evaluation order is the labels' own order; Lightning
    # shards it with its DistributedSamplerWrapper: rank r takes positions r, r + 2, ...
    val = sorted(written["test"][b"fine_labels"])
    assert ranks[0]["seen"]["val0"] == val[0::2] and ranks[1]["seen"]["val0"] == val[1::2]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_augmentation_on_cuda_matches_cpu_reference():
    gen = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=gen)
    plain = CIFAR100DataModule(augment=False, gpu_augment=True).augment_batch(images.cuda())
    torch.testing.assert_close(plain.cpu(), normalize_uint8(images, CIFAR100_MEAN, CIFAR100_STD))
    out = CIFAR100DataModule(gpu_augment=True).augment_batch(images.cuda())
    assert out.is_cuda
    for x, src in zip(out.cpu(), images, strict=True):
        normed = normalize_uint8(torch.stack(_all_crop_flips(src)), CIFAR100_MEAN, CIFAR100_STD)
        assert any(torch.allclose(x, c) for c in normed)


def test_benchmark_script_runs(capsys):
    import importlib.util

    path = REPO / "benchmarks" / "bench_cifar_loader.py"
    spec = importlib.util.spec_from_file_location("bench_cifar_loader", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main("--device cpu --n-images 300 --num-workers 0 --seconds 0.1".split())
    assert set(res) == {"dataloader", "device"} and min(res.values()) > 0
    assert "ratio:" in capsys.readouterr().out
