"""The same seed and config give the same run, bit for bit, on CPU.

The quick start (``configs/quickstart.yaml``: ``seed_everything: 0``,
``trainer.deterministic: warn``) is run twice for a few steps as two separate
processes; the logged metrics must be identical strings and the final weights
and optimizer state identical tensors. ``deterministic`` matters for REAF: with
it, ``impl="auto"`` takes a fixed rule instead of timing the strategies, whose
winner (and so the floating-point summation order) can change between runs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

QUICKSTART = REPO / "configs" / "quickstart.yaml"


@pytest.mark.slow
def test_quickstart_is_bitwise_reproducible(tmp_path):
    assert yaml.safe_load(QUICKSTART.read_text())["trainer"]["deterministic"] in (True, "warn")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("REAF_DEBUG", None)
    procs = []
    for name in ("a", "b"):
        root = tmp_path / name
        overlay = tmp_path / f"{name}.yaml"  # CSV logs instead of W&B, a few steps only
        overlay.write_text(
            yaml.safe_dump(
                {
                    "trainer": {
                        "default_root_dir": str(root),
                        "max_epochs": 1,
                        "limit_train_batches": 3,
                        "limit_val_batches": 2,
                        "enable_progress_bar": False,
                        "enable_model_summary": False,
                        "logger": {
                            "class_path": "lightning.pytorch.loggers.CSVLogger",
                            "init_args": {"save_dir": str(root), "name": "csv"},
                        },
                    }
                }
            )
        )
        cmd = [
            sys.executable,
            "-m",
            "reaf_lightning.training.cli",
            "fit",
            "--config",
            str(QUICKSTART),
            "--config",
            str(overlay),
            "--trainer.log_every_n_steps",
            "1",
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]

    metrics = [(tmp_path / n / "csv" / "version_0" / "metrics.csv").read_text() for n in "ab"]
    assert "val/acc1" in metrics[0] and len(metrics[0].splitlines()) >= 4  # 3 steps + val
    assert metrics[0] == metrics[1]

    a, b = (
        torch.load(tmp_path / n / "seed0/checkpoints/last.ckpt", weights_only=True) for n in "ab"
    )
    assert a["global_step"] == b["global_step"] == 3
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    for sa, sb in zip(
        a["optimizer_states"][0]["state"].values(),
        b["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
