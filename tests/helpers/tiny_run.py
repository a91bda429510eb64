"""What many tests share about a ``reaf-lightning`` run: the tiny quick start and W&B offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import REPO

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
#: The quick start shrunk to seconds: a tiny REAF net, 3 training and 2 validation batches.
TINY_ARGS = [
    "--config",
    QUICKSTART,
    "--model.arch",
    "test_reaf_resnet",
    "--model.arch_kwargs",
    "{}",
    "--data.init_args.batch_size",
    "16",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.log_every_n_steps",  # (3 batches < the quick start's 10: Lightning would warn)
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


def isolate_wandb(mp: pytest.MonkeyPatch, home: Path) -> None:
    """No W&B credentials or user settings: the logger's ``auto`` mode must choose offline."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_PROJECT"):
        mp.delenv(var, raising=False)
    mp.setenv("NETRC", str(home / "no-netrc"))
    mp.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))


def finish_wandb() -> None:
    """End the W&B run and wait until its files are on disk (``finish`` alone may not)."""
    import wandb

    wandb.finish()
    wandb.teardown()
