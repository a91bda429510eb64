"""DDP on CPU: 2 real processes with the gloo backend give the single-process numbers.

Why the training comparison removes BatchNorm: in training mode BN normalises
with the statistics of the *per-process* batch, so two processes with 4 images
each compute different activations (and gradients) than one process with 8;
``SyncBatchNorm`` would fix that but PyTorch implements it for GPUs only. With
BN replaced by the identity everything else is exactly data-parallel. Lightning
gives each of the 2 processes a shuffling ``DistributedSampler`` (seed
``PL_GLOBAL_SEED``): epoch ``e`` permutes the images with ``randperm(seed + e)``
and rank ``r`` takes every second one, so global step ``k`` covers images
``perm[8k : 8k + 8]``. The single process iterates the same permutation (a
1-replica ``DistributedSampler`` with the same seed) in batches of 8, so each
optimizer step sees the same 8 images; DDP averages the two per-process mean
gradients into the 8-image mean gradient, and ``lr_reference_batch_size``
keeps the lr equal (same global batch). Weights after two epochs and all
validation metrics must then agree to float tolerance. Evaluation of a network
*with* BN (eval mode uses running statistics) is compared separately, weights
held identical, through the CLI.

Validation sets here divide evenly by the two processes: a ``DistributedSampler``
pads an uneven set by repeating images, which would be counted twice.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from helpers import REPO
from helpers.wandb_records import run_contents
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from reaf_lightning import ImageClassifier
from reaf_lightning.training.cli import run

pytestmark = pytest.mark.slow
METRICS = ("val/loss", "val/acc1", "val/acc5", "val/err1", "val/err5", "train/acc1")


def _data(n: int, batch_size: int, seed: int, shuffle: str = "no") -> DataLoader:
    """Random images; ``shuffle``: ``"no"``, ``"ddp"`` (Lightning injects a shuffling
    DistributedSampler) or ``"like-ddp"`` (the same permutation in one process)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    dataset = TensorDataset(x, y)
    if shuffle == "like-ddp":  # Lightning calls set_epoch on it, as on its own samplers
        seed_all = int(os.environ.get("PL_GLOBAL_SEED", 0))
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed_all)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle == "ddp")


def _without_bn(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            _without_bn(child)
    return module


def _trainer(devices: int, **kwargs) -> pl.Trainer:
    strategy = "ddp_spawn" if devices > 1 else "auto"
    return pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def test_two_process_training_equals_single_process():
    torch.manual_seed(0)
    single = ImageClassifier(
        "test_reaf_resnet",
        num_classes=10,
        lr=0.05,
        lr_reference_batch_size=8,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="multistep",
        milestones=[1],
        gamma=0.5,
        warmup_epochs=0.5,
    )
    single.net = _without_bn(single.net)
    initial = copy.deepcopy(single.net.state_dict())
    ddp = copy.deepcopy(single)
    for model, devices, batch, shuffle in ((single, 1, 8, "like-ddp"), (ddp, 2, 4, "ddp")):
        trainer = _trainer(devices, max_epochs=2)
        trainer.fit(model, _data(32, batch, seed=1, shuffle=shuffle), _data(16, batch, seed=2))
        # (ddp_spawn sends rank 0's weights and metrics back to this process)
        model.metrics = {k: trainer.callback_metrics[k].item() for k in METRICS}
    for (name, p_single), p_ddp in zip(single.net.named_parameters(), ddp.net.parameters()):
        torch.testing.assert_close(p_ddp, p_single, rtol=1e-4, atol=1e-6, msg=name)
    trained = single.net.state_dict()  # the runs did train: the equality is not vacuous
    assert all(not torch.equal(trained[k], initial[k]) for k in ("conv1.weight", "fc.weight"))
    for key in METRICS:
        assert ddp.metrics[key] == pytest.approx(single.metrics[key], rel=1e-5, abs=1e-6), key


def test_cli_fit_with_ddp_strategy_two_processes(tmp_path, monkeypatch):
    # The real command path: Lightning re-launches `python -m reaf_lightning.training.cli` per rank;
    # only rank 0 logs to W&B and writes checkpoints. The network has BN (and REAF+ BN
    # pairs); its DDP validation metrics must equal a 1-process `validate` of the same
    # weights (the last checkpoint is written right after that validation).
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["NETRC"] = str(tmp_path / "no-netrc")
    common = [
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--model.arch",
        "test_reaf_plus_resnet",
        "--model.arch_kwargs",
        "{}",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        "logs/ddp",
    ]
    cmd = [
        sys.executable,
        "-m",
        "reaf_lightning.training.cli",
        "fit",
        *common,
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--data.init_args.batch_size",
        "8",
    ]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    root = tmp_path / "logs" / "ddp" / "seed0"  # quickstart.yaml: seed_everything 0
    ckpt = root / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False, map_location="cpu")["global_step"] == 2
    (run_file,) = glob.glob(str(root / "wandb" / "offline-run-*" / "run-*.wandb"))
    ddp_metrics = run_contents(run_file)["summary"]

    # the same 32 validation images in one process: 2 batches of 16 instead of 2 x 2 x 8
    monkeypatch.chdir(tmp_path)
    single = run(
        [
            "validate",
            *common,
            "--data.init_args.batch_size",
            "16",
            "--trainer.logger",
            "false",
            "--ckpt_path",
            str(ckpt),
        ]
    )
    for key in ("val/loss", "val/acc1", "val/acc5", "val/err1", "val/err5"):
        expected = single.trainer.callback_metrics[key].item()
        assert ddp_metrics[key] == pytest.approx(expected, rel=1e-5, abs=1e-6), key
    # The run record counts what both ranks fed (one all-reduce): the ranks' shards of the
    # class-mixed evaluation order are together its first 32 images, which the single
    # process validated; its classes are counted here from that loader's first 32 labels.
    record = json.loads((root / "metrics.json").read_text())
    labels = torch.cat([y for _, y in single.datamodule.val_dataloader()])[:32]
    val = {"limit": 2, "batches": 2, "images": 32, "classes": len(set(labels.tolist()))}
    assert record["fit"]["seen"]["val"] == record["validate"]["seen"]["val"] == val
    train = record["fit"]["seen"]["train"]  # 2 batches of 8 per rank; which classes is random
    assert (train["limit"], train["batches"], train["images"]) == (2, 2, 32)
    assert run_contents(run_file)["run"]["tags"] == ["quickstart", "digits"]
