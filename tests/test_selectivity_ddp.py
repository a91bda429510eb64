"""Class selectivity under real DDP: 2 CPU processes (gloo) give the 1-process result.

The data set has 11 samples, so a 2-replica DistributedSampler pads with one
repeated sample; counting it would shift the class means (SPEC §6 pitfall).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from analysis.hooks import compute_class_means, compute_selectivity
from reaf_lightning.models import create_model

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
