"""Class selectivity under real DDP: 2 CPU processes (gloo) give the 1-process result.

The data set has 11 samples, so a 2-replica DistributedSampler pads with one
repeated sample; counting it would shift the class means. Both the library
function and the Lightning callback (``ddp_spawn``) are checked.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from reaf_lightning.analysis.hooks import compute_class_means, compute_selectivity
from reaf_lightning.analysis.training_callback import SelectivityCallback
from reaf_lightning.models import create_model
from reaf_lightning.training.module import ImageClassifier

NUM_SAMPLES, NUM_CLASSES, WORLD = 11, 3, 2


def _dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(NUM_SAMPLES, 3, 8, 8, generator=g)
    labels = torch.arange(NUM_SAMPLES) % NUM_CLASSES
    return TensorDataset(images, labels[torch.randperm(NUM_SAMPLES, generator=g)])


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("test_reaf_resnet", num_classes=NUM_CLASSES)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        data = _dataset()
        sampler = DistributedSampler(data, num_replicas=WORLD, rank=rank, shuffle=True, seed=7)
        loader = DataLoader(data, batch_size=4, sampler=sampler)
        model = torch.nn.parallel.DistributedDataParallel(_model())
        si = compute_selectivity(model, loader, num_classes=NUM_CLASSES)  # sync is automatic
        stats = compute_class_means(model, loader, layers=["layer2"])  # num_classes inferred
        torch.save(
            {"si": si, "counts": stats.counts, "sums": stats.sums["layer2"]},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)

    data = _dataset()
    single_si = compute_selectivity(
        _model(), DataLoader(data, batch_size=4), num_classes=NUM_CLASSES
    )
    single = compute_class_means(_model(), DataLoader(data, batch_size=4), layers=["layer2"])
    assert int(single.counts.sum()) == NUM_SAMPLES
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["counts"].tolist() == single.counts.tolist()  # padding sample not counted
        # float32 activations differ at ~1e-7 relative with batch composition and thread
        # count; a double-counted or missing sample would move sums and SI by ~1e-2.
        torch.testing.assert_close(got["sums"], single.sums["layer2"], rtol=1e-5, atol=1e-5)
        assert list(got["si"]) == list(single_si)
        for layer, si in single_si.items():
            torch.testing.assert_close(got["si"][layer], si, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- the callback


class _TensorData(pl.LightningDataModule):
    """11 fixed images: a 2-process DistributedSampler pads one repeated sample."""

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_dataset(), batch_size=4)


def _validate(root: Path, **trainer_kwargs) -> pd.DataFrame:
    torch.manual_seed(0)
    module = ImageClassifier(arch="test_reaf_resnet", num_classes=NUM_CLASSES)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(root),
        callbacks=[SelectivityCallback(layers=["layer1", "layer3", "avgpool"])], **trainer_kwargs,
    )  # fmt: skip
    trainer.validate(module, datamodule=_TensorData(), verbose=False)
    return pd.read_csv(root / "selectivity.csv")


@pytest.mark.slow
def test_callback_two_processes_equal_one_process(tmp_path):
    single = _validate(tmp_path / "one", devices=1)
    double = _validate(tmp_path / "two", devices=WORLD, strategy="ddp_spawn")
    assert list(double.layer) == list(single.layer) and list(double.unit) == list(single.unit)
    np.testing.assert_allclose(double.si, single.si, rtol=1e-4, atol=1e-5)
    # ... and both are the library's one-process result over all 11 images
    torch.manual_seed(0)
    net = ImageClassifier(arch="test_reaf_resnet", num_classes=NUM_CLASSES).net
    expected = compute_selectivity(
        net, DataLoader(_dataset(), batch_size=4), layers=["layer1", "layer3", "avgpool"]
    )
    for layer, si in expected.items():
        got = single[single.layer == layer].sort_values("unit").si.to_numpy()
        np.testing.assert_allclose(got, si.numpy(), rtol=1e-4, atol=1e-5)
