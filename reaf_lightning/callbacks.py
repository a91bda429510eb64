"""Callbacks that keep an interrupted run resumable (issue 6; not part of the paper).

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

__all__ = ["PreemptionCheckpoint"]


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
        rank_zero_info(
            f"SIGTERM: saved {path} at epoch {progress[0]}, global step {progress[1]}"
        )
        exception.reaf_checkpoint = str(path)  # type: ignore[attr-defined]
        exception.reaf_progress = progress  # type: ignore[attr-defined]

    @staticmethod
    def checkpoint_path(trainer: pl.Trainer) -> Path:
        """``<ModelCheckpoint dirpath>/last.ckpt`` (else ``<default_root_dir>/checkpoints``)."""
        callback = trainer.checkpoint_callback
        dirpath = callback.dirpath if isinstance(callback, ModelCheckpoint) else None
        if not dirpath:
            dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        name = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
        return Path(dirpath) / name
