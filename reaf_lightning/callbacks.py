"""Callbacks that keep an interrupted run resumable (issue 6; not part of the paper).

:class:`EveryEpochLastCheckpoint` restores what ``save_last=True`` meant before
Lightning 2.6: ``last.ckpt`` is rewritten at *every* checkpointing point. Since
2.6, ``ModelCheckpoint`` writes ``last.ckpt`` only when a top-k checkpoint is
written at the same step, so with ``monitor="val/acc1", save_top_k=1`` an epoch
that does not improve the accuracy leaves ``last.ckpt`` behind, and
``--ckpt_path last`` would silently redo every epoch since the best one.

Cluster schedulers stop jobs with ``SIGTERM`` (preemption, time limit, ``scancel``)
and follow with ``SIGKILL`` after a grace period. Lightning already turns
``SIGTERM`` into a ``SIGTERMException`` raised at the next batch boundary (a
consistent state: the optimizer step of that batch is complete), but by itself
it saves nothing and exits with status 0, so a preempted job would lose the
epoch in progress and look successful. :class:`PreemptionCheckpoint` saves
``last.ckpt`` at that point; ``reaf-lightning`` then exits with status 143
(128 + SIGTERM) and says so, and ``--ckpt_path last`` continues from there.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from reaf_lightning.report.record import MetricsFile

__all__ = ["EveryEpochLastCheckpoint", "PreemptionCheckpoint", "standard_callbacks"]


class EveryEpochLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` follows every epoch, improved or not.

    Same arguments as Lightning's ``ModelCheckpoint``. After the parent's own
    logic at the end of validation (or of the training epoch, whichever the
    parent checkpoints at), ``last.ckpt`` is written unless the parent already
    wrote a checkpoint at this global step. ``save_last="link"`` is left to the
    parent.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def _ensure_last(self, trainer: pl.Trainer) -> None:
        if self.save_last is not True or self._should_skip_saving_checkpoint(trainer):
            return  # skipped: disabled, not fitting, sanity check, or already saved at this step
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class PreemptionCheckpoint(Callback):
    """On ``SIGTERM`` during ``fit``, save ``<checkpoint dir>/last.ckpt`` before the process exits.

    The file goes where ``--ckpt_path last`` looks: the directory of the
    trainer's ``ModelCheckpoint`` (``<default_root_dir>/checkpoints`` in the
    CLI), name ``last.ckpt``. It is written by the trainer's checkpoint IO, so
    atomically with :class:`~reaf_lightning.checkpointing.AtomicCheckpointIO`.
    Every rank takes part (saving is collective under DDP; Lightning
    broadcasts the signal so all ranks stop at the same batch).

    The path and the progress are attached to the exception
    (``reaf_checkpoint``, ``reaf_progress``) for the CLI's exit message.
    """

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.sanity_checking:  # nothing trained yet in this process
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        progress = (trainer.current_epoch, trainer.global_step)
        rank_zero_info(f"SIGTERM: saved {path} at epoch {progress[0]}, global step {progress[1]}")
        exception.reaf_checkpoint = str(path)  # type: ignore[attr-defined]
        exception.reaf_progress = progress  # type: ignore[attr-defined]

    @staticmethod
    def checkpoint_path(trainer: pl.Trainer) -> Path:
        """The run's ``last`` checkpoint: the file its ``ModelCheckpoint`` keeps up to date
        (``last.ckpt``, or ``last-v1.ckpt`` when an older run's file was in the way), else
        ``<ModelCheckpoint dirpath or <default_root_dir>/checkpoints>/last.ckpt``."""
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.last_model_path:
            return Path(callback.last_model_path)
        dirpath = callback.dirpath if isinstance(callback, ModelCheckpoint) else None
        if not dirpath:
            dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        name = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
        return Path(dirpath) / name


def standard_callbacks() -> list[Callback]:
    """The callbacks every ``reaf-lightning`` run gets, in addition to those of its config.

    ``reaf-lightning`` passes them as LightningCLI ``trainer_defaults``, which
    Lightning appends to the configured ``trainer.callbacks``.
    """
    return [PreemptionCheckpoint(), MetricsFile()]
