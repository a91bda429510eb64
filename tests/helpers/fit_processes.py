"""Fault injection for the reliability tests (the real-process tests under tests/).

Callbacks that the tests put into real ``reaf-lightning`` runs by class path
(``--trainer.callbacks+=helpers.fit_processes.PauseAt``), so that a fault hits a
known epoch and batch of an otherwise normal run:

* :class:`PauseAt` holds the run at one batch, after writing a "ready" file,
  until it is killed (``SIGKILL``) or until ``SIGTERM`` has been received;
* :class:`PoisonBatch` replaces the images of one batch by NaN (a corrupt
  sample, an overflow in augmentation ...);
* :class:`PoisonWeights` sets one weight to NaN after one optimizer step (a
  diverged update whose loss was still finite);
* :class:`RecordStep` saves the network's state before and after one batch;
* :class:`TorchShapeBug` makes PyTorch raise a ``ValueError`` mid-run (a bug,
  not a user error);
* :class:`TouchOnLoad` is an object whose unpickling creates a file (a crafted
  checkpoint's payload, harmless and observable).

Plus :func:`tiny_config`, the YAML of a run that takes a second or two per epoch,
(the fixture ``one_thread`` of ``conftest.py`` keeps such runs to one thread).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from helpers import TESTS

__all__ = [
    "PauseAt",
    "PoisonBatch",
    "PoisonWeights",
    "RecordStep",
    "TorchShapeBug",
    "TouchOnLoad",
    "tiny_config",
    "write_config",
]


def tiny_config(root: Path, max_epochs: int = 3, train_batches: int = 4, **model: Any) -> dict:
    """A complete ``reaf-lightning fit`` config: tiny REAF net on 16x16 digits, CSV logs."""
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            # fixed REAF strategy rule instead of timing them (~14 s per process on 2 cores)
            "deterministic": "warn",
            "max_epochs": max_epochs,
            "limit_train_batches": train_batches,
            "limit_val_batches": 2,  # (1 would be read as 1.0 = all batches)
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(root), "name": "csv"},
            },
        },
        "model": {"arch": "test_reaf_resnet", "lr": 0.05, **model},
        "data": {
            "class_path": "reaf_lightning.data.DigitsDataModule",
            "init_args": {"batch_size": 16, "image_size": 16},
        },
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _at(trainer: pl.Trainer, epoch: int, batch_idx: int, target_batch: int) -> bool:
    return trainer.current_epoch == epoch and batch_idx == target_batch


class PauseAt(Callback):
    """Hold the run at the start of batch ``batch`` of epoch ``epoch`` (of its validation with
    ``validation``; the sanity check aside).

    Writes ``ready_file`` first (the test waits for it). With
    ``until_sigterm`` the batch then goes on as soon as Lightning has seen a
    ``SIGTERM``; otherwise the process waits to be killed. ``max_wait`` seconds
    bound the wait so that a broken test never leaves a process behind.
    """

    def __init__(
        self,
        epoch: int,
        batch: int,
        ready_file: str,
        until_sigterm: bool = False,
        max_wait: float = 240.0,
        validation: bool = False,
    ) -> None:
        self.epoch, self.batch = epoch, batch
        self.ready_file = ready_file
        self.until_sigterm = until_sigterm
        self.max_wait = max_wait
        self.validation = validation

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.validation:
            self._hold(trainer, batch_idx)

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, *_
    ) -> None:
        if self.validation and not trainer.sanity_checking:
            self._hold(trainer, batch_idx)

    def _hold(self, trainer: pl.Trainer, batch_idx: int) -> None:
        if not _at(trainer, self.epoch, batch_idx, self.batch):
            return
        tmp = f"{self.ready_file}.tmp"
        Path(tmp).write_text(f"{trainer.current_epoch} {trainer.global_step} {os.getpid()}")
        os.replace(tmp, self.ready_file)
        deadline = time.monotonic() + self.max_wait
        while time.monotonic() < deadline:
            if self.until_sigterm and trainer.received_sigterm:
                return
            time.sleep(0.05)
        raise RuntimeError(f"PauseAt: nobody stopped the run within {self.max_wait} s")


class PoisonBatch(Callback):
    """Fill the images of batch ``batch`` of epoch ``epoch`` with NaN (in place)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if _at(trainer, self.epoch, batch_idx, self.batch):
            batch[0].fill_(float("nan"))


class PoisonWeights(Callback):
    """Set one weight to NaN after the optimizer step of batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if _at(trainer, self.epoch, batch_idx, self.batch):
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


class RecordStep(Callback):
    """``torch.save`` the network state (params + buffers) before and after one batch."""

    def __init__(self, epoch: int, batch: int, out_dir: str) -> None:
        self.epoch, self.batch = epoch, batch
        self.out_dir = Path(out_dir)

    def _save(self, pl_module: pl.LightningModule, name: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.out_dir / name)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if _at(trainer, self.epoch, batch_idx, self.batch):
            self._save(pl_module, "before.pt")

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if _at(trainer, self.epoch, batch_idx, self.batch):
            self._save(pl_module, "after.pt")


class TorchShapeBug(Callback):
    """Call ``cross_entropy`` with mismatched batch sizes at the first training batch."""

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        torch.nn.functional.cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


class TouchOnLoad:
    """Pickles as "create ``path``": stands for code a crafted checkpoint runs when unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (Path(self.path),))


# --- real fit processes (the slow run-directory and checkpoint tests) -------------------------


def fit_process_env() -> dict[str, str]:
    """The environment of a ``reaf-lightning fit`` child: these helpers importable, no W&B."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env["WANDB_MODE"] = "disabled"
    env.pop("REAF_DEBUG", None)
    return env


def start_fit(config: Path, *extra: str) -> subprocess.Popen:
    """``python -m reaf_lightning.training.cli fit --config CONFIG EXTRA...`` as a real process."""
    cmd = [
        sys.executable,
        "-m",
        "reaf_lightning.training.cli",
        "fit",
        "--config",
        str(config),
        *extra,
    ]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=fit_process_env(),
        cwd=config.parent,
    )


def pause_args(
    ready: Path, epoch: int, batch: int, until_sigterm: bool = False, validation: bool = False
) -> list[str]:
    """Command-line arguments adding :class:`PauseAt` at ``epoch``/``batch``."""
    return [
        "--trainer.callbacks+=helpers.fit_processes.PauseAt",
        "--trainer.callbacks.init_args.epoch",
        str(epoch),
        "--trainer.callbacks.init_args.batch",
        str(batch),
        "--trainer.callbacks.init_args.ready_file",
        str(ready),
        "--trainer.callbacks.init_args.until_sigterm",
        str(until_sigterm).lower(),
        "--trainer.callbacks.init_args.validation",
        str(validation).lower(),
    ]


def wait_for(path: Path, proc: subprocess.Popen, limit: float = 300.0) -> None:
    """Wait until ``path`` exists (the run reached the pause), failing if the run ended."""

    deadline = time.monotonic() + limit
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended (status {proc.returncode}) before {path.name}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"run never reached {path.name}")
        time.sleep(0.1)
