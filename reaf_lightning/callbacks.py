"""The callbacks every ``reaf-lightning`` run gets (:func:`standard_callbacks`). None is
part of the paper; they keep long runs safe, resumable and traceable.

* :class:`EveryEpochLastCheckpoint` restores what ``save_last=True`` meant
  before Lightning 2.6: ``last.ckpt`` is rewritten at *every* checkpointing
  point. Since 2.6, ``ModelCheckpoint`` writes ``last.ckpt`` only when a top-k
  checkpoint is written at the same step, so with ``monitor="val/acc1",
  save_top_k=1`` an epoch that does not improve the accuracy would leave
  ``last.ckpt`` behind and ``--ckpt_path last`` would silently redo every epoch
  since the best one.
* :class:`PreemptionCheckpoint`: cluster schedulers stop jobs with ``SIGTERM``.
  Lightning turns it into a ``SIGTERMException`` at the next batch boundary
  but saves nothing; this callback saves ``last.ckpt`` there, and
  ``reaf-lightning`` exits with status 143.
* :class:`NonFiniteLossPolicy` and :class:`FiniteCheckpointGuard`: a NaN/inf
  loss stops the run (exit 3) or skips the batch, and a checkpoint with
  non-finite weights is never written, so the last good one survives.
* :class:`LogComplexity` and :class:`LogProvenance` record #params/MACs and
  what produced the run (package version, git commit, command line).
* :class:`~reaf_lightning.predictions.PredictionWriter` writes
  ``predictions.csv`` into the run directory after ``predict``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from reaf_lightning.errors import NumericalError
from reaf_lightning.loggers import provenance
from reaf_lightning.models.complexity import network_complexity
from reaf_lightning.predictions import PredictionWriter

__all__ = [
    "EveryEpochLastCheckpoint",
    "FiniteCheckpointGuard",
    "LogComplexity",
    "LogProvenance",
    "NonFiniteLossPolicy",
    "PreemptionCheckpoint",
    "PredictionWriter",
    "standard_callbacks",
]

_ADVICE = "lower model.lr, add warm-up or gradient clipping"


class EveryEpochLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` follows every epoch, improved or not.

    Same arguments as Lightning's ``ModelCheckpoint``. After the parent's own
    logic at the end of validation (or of the training epoch, whichever the
    parent checkpoints at), ``last.ckpt`` is written unless the parent already
    wrote a checkpoint at this global step. ``save_last="link"`` is left to the
    parent.

    Private API that remains, and why: Lightning has no public way to write
    ``last.ckpt`` outside its top-k logic, so this subclass calls
    ``ModelCheckpoint._save_last_checkpoint`` with the parent's own checks
    (``_should_skip_saving_checkpoint``, ``_should_save_on_train_epoch_end``,
    ``_monitor_candidates``). The alternative, a second ``ModelCheckpoint``
    without monitor, would write every epoch's weights twice and give
    ``--ckpt_path last`` two candidates. The CLI's tests on resuming catch a
    change of these methods.
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


def _kept_checkpoint(trainer: pl.Trainer) -> str:
    """Where the last good checkpoint is, for the messages of a stopped run."""
    callback = trainer.checkpoint_callback
    last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return (
        f"the last good checkpoint {last} is kept" if last else "no checkpoint had been saved yet"
    )


class NonFiniteLossPolicy(Callback):
    """Apply the module's ``nan_policy`` to a NaN/inf training loss.

    ``"stop"`` (default) raises :class:`~reaf_lightning.errors.NumericalError`
    (exit status 3) before the backward pass, naming epoch, step and the kept
    checkpoint. ``"skip"`` lets the batch pass without effect: its gradients are
    dropped before the optimizer step (SGD leaves parameters without gradient
    and their momentum untouched), the BatchNorm statistics its forward pass
    changed are restored, a warning counts the skipped batches and
    ``train/skipped_batches`` is logged; the step still counts for the lr
    schedule. ``max_consecutive_skips`` bad batches in a row stop the run anyway
    (the model has most likely diverged). Under DDP the decision is taken
    jointly: a bad batch on any rank affects all. Costs one scalar
    device-to-host copy per step (and with ``"skip"`` a copy of the buffers).

    The settings are the module's hyperparameters ``nan_policy`` and
    ``max_consecutive_skips`` (``model.nan_policy`` on the command line), so
    that they are saved, logged and resumed with the model; a module without
    them gets ``"stop"``.
    """

    def __init__(self) -> None:
        self.skipped_batches = 0  # non-finite batches skipped by this run so far
        self._consecutive = 0
        self._batch_idx = 0
        self._buffers: list[Tensor] | None = None
        self._skipping = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx, self._skipping = batch_idx, False
        # BatchNorm updates its running statistics in the forward pass, before the loss
        # is known; "skip" must undo that too, so the buffers are copied first (small).
        skip = pl_module.hparams.get("nan_policy") == "skip"
        self._buffers = [b.detach().clone() for b in pl_module.buffers()] if skip else None

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            self._consecutive = 0
            return
        value = loss.detach().float().cpu().item()
        where = (
            f"epoch {trainer.current_epoch}, global step {trainer.global_step} "
            f"(batch {self._batch_idx} of the epoch)"
        )
        if self._buffers is None:
            raise NumericalError(
                f"non-finite training loss ({value}) at {where}; training stopped "
                f"(model.nan_policy=stop) and {_kept_checkpoint(trainer)}; {_ADVICE}, or set "
                "model.nan_policy=skip to skip such batches"
            )
        self._consecutive += 1
        limit = pl_module.hparams.get("max_consecutive_skips", 10)
        if self._consecutive >= limit:
            raise NumericalError(
                f"{limit} consecutive non-finite training losses (last {value} at {where}): the "
                f"model has most likely diverged; training stopped and "
                f"{_kept_checkpoint(trainer)}; {_ADVICE}"
            )
        self.skipped_batches += 1
        self._skipping = True
        rank_zero_warn(
            f"skipping a batch with non-finite training loss ({value}) at {where}; "
            f"{self.skipped_batches} batch(es) skipped so far (model.nan_policy=skip)"
        )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """After the backward pass (which reads the buffers) and before the update."""
        if not self._skipping or self._buffers is None:
            return
        optimizer.zero_grad(set_to_none=True)  # no gradient, no update
        with torch.no_grad():
            for buffer, saved in zip(pl_module.buffers(), self._buffers, strict=True):
                buffer.copy_(saved)
        pl_module.log("train/skipped_batches", float(self.skipped_batches), on_step=True)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_batches": self.skipped_batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_batches = int(state_dict.get("skipped_batches", 0))


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
        bad = [
            name
            for name, value in checkpoint["state_dict"].items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())
        ]
        if bad:
            more = f" and {len(bad) - 1} other tensor(s)" if len(bad) > 1 else ""
            raise NumericalError(
                f"non-finite values in {bad[0]}{more} at epoch {trainer.current_epoch}, "
                f"global step {trainer.global_step}: not saving this checkpoint, and "
                f"{_kept_checkpoint(trainer)}; {_ADVICE}"
            )


class LogComplexity(Callback):
    """Log the network's #params and MACs once per stage, for the image size actually fed.

    Applies to modules built from the registry (hyperparameters ``arch``,
    ``arch_kwargs``, ``num_classes``, as :class:`~reaf_lightning.ImageClassifier`);
    the numbers stay available as :attr:`values`.
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.values = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._log_once(trainer, pl_module, batch)

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: int
    ) -> None:
        self._log_once(trainer, pl_module, batch)

    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: int
    ) -> None:
        self._log_once(trainer, pl_module, batch)

    def _log_once(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        hp = pl_module.hparams
        if self.values is not None or "arch" not in hp:
            return
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        self.values = network_complexity(
            hp["arch"], hp.get("arch_kwargs"), hp["num_classes"], tuple(x.shape[1:])
        )
        for logger in trainer.loggers:
            logger.log_hyperparams(self.values)


class LogProvenance(Callback):
    """Record :func:`~reaf_lightning.loggers.provenance` with every stage, as
    ``provenance/<stage>``, so a ``validate`` logged into a trained run keeps the
    ``fit`` command beside its own."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.loggers and trainer.is_global_zero:
            record = {f"provenance/{TrainerFn(stage).value}": provenance()}
            for logger in trainer.loggers:
                logger.log_hyperparams(record)


def standard_callbacks() -> list[Callback]:
    """The callbacks every ``reaf-lightning`` run gets, in addition to those of its config.

    ``reaf-lightning`` passes them as LightningCLI ``trainer_defaults``, which
    Lightning appends to the configured ``trainer.callbacks``.
    """
    from reaf_lightning.report.record import MetricsFile  # it reads LogComplexity's counts

    return [
        PreemptionCheckpoint(),
        NonFiniteLossPolicy(),
        FiniteCheckpointGuard(),
        LogComplexity(),
        LogProvenance(),
        PredictionWriter(),
        MetricsFile(),
    ]
