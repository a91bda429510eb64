"""What many tests share about a ``reaf-lightning`` run: the tiny quick start, W&B offline,
``reaf-lightning`` called in-process, and a run directory's every entry for comparisons."""

from __future__ import annotations

import hashlib
import os
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


#: No logger: the tests that compare run directories need no W&B files.
NO_LOGGER = ["--trainer.logger", "false"]


def main_lines(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, list[str]]:
    """``reaf-lightning ARGS`` in-process: the exit status a shell sees and the package's own
    stderr lines."""
    from reaf_lightning.training.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 0
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("reaf-lightning:")]


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``, hidden ones included, links not followed: a file's hash,
    a link's target, ``dir`` for a folder (what "nothing was written" is compared on)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                out[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[key] = "dir"
            elif path.is_file():
                out[key] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            else:
                out[key] = "other"  # a FIFO or a device: never opened
    return out
