"""How a run saves checkpoints: never half-written, ``last.ckpt`` every epoch, and on ``SIGTERM``.

Not part of the paper: this keeps the paper's long runs (200 CIFAR-100 epochs,
100 ImageNet epochs, paper §IV-A and §IV-B) from losing work.

* :class:`AtomicCheckpointIO` writes every checkpoint through
  :func:`reaf_lightning.io.atomic_outputs` (temporary file in the checkpoint
  directory, ``fsync``, rename). Lightning's default writes through a temporary
  file in the system temp dir; when that is another file system than the
  checkpoints (local ``/tmp``, checkpoints on NFS/Lustre) the last step is a
  *copy into the final name*, and a failure during it leaves a truncated
  ``last.ckpt`` where the good one was.
* :class:`EveryEpochLastCheckpoint` (the CLI's ``checkpoint:`` group, with no
  version counter, so no ``last-vN.ckpt`` ever appears) restores what ``save_last=True`` meant
  before Lightning 2.6: ``last.ckpt`` is rewritten at *every* checkpointing
  point. Since 2.6, ``ModelCheckpoint`` writes ``last.ckpt`` only when a top-k
  checkpoint is written at the same step, so with ``monitor="val/acc1",
  save_top_k=1`` an epoch that does not improve the accuracy would leave
  ``last.ckpt`` behind and ``--ckpt_path last`` would silently redo every epoch
  since the best one.
* :class:`PreemptionCheckpoint`: cluster schedulers stop jobs with ``SIGTERM``.
  Lightning turns it into a ``SIGTERMException`` at the next batch boundary
  but saves nothing; this callback saves ``last.ckpt`` there, and
  ``reaf-lightning`` exits with status 143. Stopped during a validation of the
  fit, the checkpoint makes the resume run that validation again, whole.
* :class:`FiniteCheckpointGuard`: a checkpoint with non-finite weights is never
  written, so the last good one survives.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from fsspec.utils import get_protocol
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from reaf_lightning.io import atomic_outputs
from reaf_lightning.runs.checkpoint import check_finite
from reaf_lightning.runs.layout import RunDir
from reaf_lightning.runs.owned import claim, unclaim
from reaf_lightning.training.private_api import (
    rerun_interrupted_validation,
    save_last_checkpoint,
    saves_on_train_epoch_end,
    skips_saving,
)

#: What to try after a numerical fault, for the messages of a stopped run.
NUMERICAL_ADVICE = "lower model.lr, add warm-up or gradient clipping"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are all-or-nothing on local file systems.

    A reader (``--ckpt_path last``, ``reaf-analysis``) sees either the previous
    complete file or the new complete file, whatever happens during the save
    (exception, ``SIGKILL``, full disk, node crash after the rename). Remote
    URLs (``s3://``, ``gs://``) go to Lightning's implementation: an
    object-store upload is already atomic.

    Reading: a checkpoint that ``reaf-lightning`` has already loaded to check it
    (:meth:`hand_over`) is given to Lightning's restore as it is, so a resume reads
    the file once. It was loaded on the CPU; the restore moves the weights and the
    optimiser state to the model's device, as for any checkpoint.

    Args:
        run_dir: the run directory whose record lists every checkpoint written here
            before it is written, and forgets one Lightning removes
            (:mod:`reaf_lightning.runs.owned`); ``None``: no record is kept.
    """

    def __init__(self, run_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self._handed_over: tuple[str, dict[str, Any]] | None = None

    def hand_over(self, path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> None:
        """Let the next :meth:`load_checkpoint` of ``path`` return ``checkpoint`` (once)."""
        self._handed_over = (str(path), checkpoint)

    def load_checkpoint(self, path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> dict:
        handed, self._handed_over = self._handed_over, None
        if handed is not None and handed[0] == str(path):
            return handed[1]
        return super().load_checkpoint(path, *args, **kwargs)

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str | os.PathLike[str],
        storage_options: Any | None = None,
    ) -> None:
        if storage_options is not None or get_protocol(str(path)) not in ("file", "local"):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        local = str(path).removeprefix("file://")
        if self.run_dir is not None:
            claim(self.run_dir, [local])
        with atomic_outputs([local]) as (temporary,):
            torch.save(checkpoint, temporary)

    def remove_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Delete a checkpoint Lightning no longer keeps (an older best), and unlist it."""
        super().remove_checkpoint(path)
        if self.run_dir is not None and get_protocol(str(path)) in ("file", "local"):
            unclaim(self.run_dir, [str(path).removeprefix("file://")])


class EveryEpochLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` follows every epoch, improved or not.

    Same arguments as Lightning's ``ModelCheckpoint``. After the parent's own
    logic at the end of validation (or of the training epoch, whichever the
    parent checkpoints at), ``last.ckpt`` is written unless the parent already
    wrote a checkpoint at this global step. ``save_last="link"`` is left to the
    parent.

    When to save, and the save itself, are the parent's own (private) logic, reached through
    :mod:`~reaf_lightning.training.private_api` (the reason is there).
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not saves_on_train_epoch_end(self, trainer):
            self._ensure_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if saves_on_train_epoch_end(self, trainer):
            self._ensure_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Lightning 2.6 writes ``last.ckpt`` here even for ``fast_dev_run``; a smoke run (or
        a step already saved) is skipped by the parent's own check."""
        if not skips_saving(self, trainer):
            super().on_train_end(trainer, pl_module)

    def _ensure_last(self, trainer: pl.Trainer) -> None:
        # not when disabled, not fitting, sanity checking, or already saved at this step
        if self.save_last is True and not skips_saving(self, trainer):
            save_last_checkpoint(self, trainer)


class PreemptionCheckpoint(Callback):
    """On ``SIGTERM`` during ``fit``, save ``<checkpoint dir>/last.ckpt`` before the process exits.

    The file goes where ``--ckpt_path last`` looks: the directory of the
    trainer's ``ModelCheckpoint`` (``<default_root_dir>/checkpoints`` in the
    CLI), name ``last.ckpt``. It is written by the trainer's checkpoint IO, so
    atomically with :class:`~reaf_lightning.training.saving.AtomicCheckpointIO`.
    Every rank takes part (saving is collective under DDP; Lightning
    broadcasts the signal so all ranks stop at the same batch).

    Stopped during a validation of the fit, the checkpoint is written so that the
    resume runs that validation again, whole, before it trains on
    (:func:`~reaf_lightning.training.private_api.rerun_interrupted_validation`):
    Lightning alone would take it as done, and the epoch would have no metrics.

    What was saved is attached to the exception as ``reaf_note``, the line
    ``reaf-lightning`` ends with.
    """

    def __init__(self) -> None:
        self._validation_interrupted = False

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.sanity_checking or trainer.fast_dev_run:  # nothing of a run to keep
            return
        path = self.checkpoint_path(trainer)
        self._validation_interrupted = trainer.validating
        try:
            trainer.save_checkpoint(path)
        finally:
            self._validation_interrupted = False
        where = f"epoch {trainer.current_epoch}, global step {trainer.global_step}"
        if trainer.validating:
            where += " (during its validation, which the resume runs again)"
        rank_zero_info(f"SIGTERM: saved {path} at {where}")
        note = f"preempted by SIGTERM at {where}; saved {path}; resume with --ckpt_path last"
        exception.reaf_note = note  # type: ignore[attr-defined]

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._validation_interrupted:
            rerun_interrupted_validation(checkpoint)

    @staticmethod
    def checkpoint_path(trainer: pl.Trainer) -> Path:
        """The run's ``last.ckpt``, in the directory of its ``ModelCheckpoint`` (the run
        layout's ``checkpoints/`` unless configured elsewhere)."""
        callback = trainer.checkpoint_callback
        dirpath = callback.dirpath if isinstance(callback, ModelCheckpoint) else None
        return RunDir(Path(trainer.default_root_dir), dirpath and Path(dirpath)).last_checkpoint


def kept_checkpoint(trainer: pl.Trainer) -> str:
    """Where the last good checkpoint is, for the messages of a stopped run."""
    callback = trainer.checkpoint_callback
    last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return (
        f"the last good checkpoint {last} is kept" if last else "no checkpoint had been saved yet"
    )


class FiniteCheckpointGuard(Callback):
    """Refuse to write a checkpoint whose weights or statistics are not finite.

    A diverged update can leave NaN weights while the loss of that step was
    still finite. Raising :class:`~reaf_lightning.errors.NumericalError` while
    the checkpoint is being assembled happens before anything is written, so the
    previous ``last.ckpt`` and the best checkpoint stay as they were.
    """

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        check_finite(
            checkpoint["state_dict"],
            lambda where: (
                f"non-finite values in {where} at epoch {trainer.current_epoch}, "
                f"global step {trainer.global_step}: not saving this checkpoint, and "
                f"{kept_checkpoint(trainer)}; {NUMERICAL_ADVICE}"
            ),
        )
