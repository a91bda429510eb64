"""Suite-wide fixtures: the process's deterministic mode, and one trained tiny run to share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
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

# The process's state before any test (or fixture) ran.
_INITIAL_DETERMINISTIC = (
    torch.are_deterministic_algorithms_enabled(),
    torch.is_deterministic_algorithms_warn_only_enabled(),
)


@pytest.fixture(autouse=True)
def _reset_deterministic_mode():
    """In-process ``Trainer(deterministic=...)`` runs switch a process-global torch flag.

    Left on (also by module-scoped fixtures that train), it silently changes later
    tests (e.g. REAF ``impl="auto"`` stops timing), so every test starts and ends
    with the process's initial mode.
    """
    enabled, warn_only = _INITIAL_DETERMINISTIC
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """The run directory of one tiny quick-start ``fit`` (1 epoch), trained once per session.

    Trained through the CLI like a user would (``reaf-lightning fit --config
    configs/quickstart.yaml`` + :data:`TINY_ARGS`), with W&B offline: the directory
    is ``<tmp>/logs/quickstart/seed0`` and holds ``config.yaml``,
    ``checkpoints/{last,best-epoch=000}.ckpt`` and ``wandb/offline-run-*``.
    Treat it as read-only: copy it (``shutil.copytree``) before training on.
    """
    from reaf_lightning.cli import run

    tmp = tmp_path_factory.mktemp("trained_run")
    cwd = os.getcwd()
    with pytest.MonkeyPatch.context() as mp:
        isolate_wandb(mp, tmp)
        mp.delenv("REAF_DEBUG", raising=False)
        os.chdir(tmp)
        try:
            run(["fit", *TINY_ARGS, "--trainer.max_epochs", "1"])
        finally:
            finish_wandb()
            os.chdir(cwd)
            enabled, warn_only = _INITIAL_DETERMINISTIC
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    return tmp / "logs" / "quickstart" / "seed0"
