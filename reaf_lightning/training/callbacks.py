"""The callbacks every ``reaf-lightning`` run gets (:func:`standard_callbacks`). None is
part of the paper; they keep long runs safe, resumable and traceable.

* :class:`~reaf_lightning.training.saving.PreemptionCheckpoint` saves ``last.ckpt``
  on ``SIGTERM`` (``reaf-lightning`` exits with status 143).
* :class:`NonFiniteLossPolicy` (the CLI's ``non_finite:`` group) and
  :class:`~reaf_lightning.training.saving.FiniteCheckpointGuard`: a NaN/inf
  loss stops the run (exit 3) or skips the batch, and a checkpoint with
  non-finite weights is never written, so the last good one survives.
* :class:`LogComplexity` and :class:`LogProvenance` record #params/MACs and
  what produced the run (package version, git commit, command line);
  :class:`TagDataSet` tags the W&B run with the data set actually used.
* :class:`~reaf_lightning.training.predictions.PredictionWriter` writes
  ``predictions.csv`` into the run directory after ``predict``.
* :class:`~reaf_lightning.runs.writer.MetricsFile` writes the run record
  (``metrics.json``, and ``reaf_run`` in every checkpoint).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from reaf_lightning.conversion.sources import build_network
from reaf_lightning.errors import ConfigError, NumericalError
from reaf_lightning.models.complexity import network_complexity
from reaf_lightning.runs.provenance import provenance
from reaf_lightning.runs.writer import MetricsFile
from reaf_lightning.training.predictions import PredictionWriter
from reaf_lightning.training.saving import (
    NUMERICAL_ADVICE,
    FiniteCheckpointGuard,
    PreemptionCheckpoint,
    kept_checkpoint,
)

NanPolicy = Literal["stop", "skip"]


class NonFiniteLossPolicy(Callback):
    """What a NaN/inf training loss does: ``stop`` the run, or ``skip`` the batch.

    ``"stop"`` (default) raises :class:`~reaf_lightning.errors.NumericalError`
    (exit status 3) before the backward pass, naming epoch, step and the kept
    checkpoint. ``"skip"`` lets the batch pass without effect: its gradients are
    dropped before the optimizer step (SGD leaves parameters without gradient
    and their momentum untouched), the BatchNorm statistics its forward pass
    changed are restored, a warning counts the skipped batches and
    ``train/skipped_batches`` is logged; the step still counts for the lr
    schedule. Under DDP the decision is taken jointly: a bad batch on any rank
    affects all. Costs one scalar device-to-host copy per step (and with
    ``"skip"`` a copy of the buffers).

    ``reaf-lightning`` configures it as the ``non_finite:`` group
    (``--non_finite.policy skip``). Nothing of it is restored from a checkpoint
    but the count of skipped batches, so a resumed run may change it.

    Args:
        policy: ``"stop"`` or ``"skip"``.
        max_consecutive_skips: with ``"skip"``, stop anyway after this many
            non-finite batches in a row (the model has most likely diverged).
    """

    def __init__(self, policy: NanPolicy = "stop", max_consecutive_skips: int = 10) -> None:
        if max_consecutive_skips < 1:
            raise ConfigError(f"max_consecutive_skips must be >= 1, got {max_consecutive_skips!r}")
        self.policy, self.max_consecutive_skips = policy, max_consecutive_skips
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
        skip = self.policy == "skip"
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
                f"(non_finite.policy=stop) and {kept_checkpoint(trainer)}; {NUMERICAL_ADVICE}, "
                "or set non_finite.policy=skip to skip such batches"
            )
        self._consecutive += 1
        if self._consecutive >= self.max_consecutive_skips:
            raise NumericalError(
                f"{self.max_consecutive_skips} consecutive non-finite training losses (last "
                f"{value} at {where}): the model has most likely diverged; training stopped and "
                f"{kept_checkpoint(trainer)}; {NUMERICAL_ADVICE}"
            )
        self.skipped_batches += 1
        self._skipping = True
        rank_zero_warn(
            f"skipping a batch with non-finite training loss ({value}) at {where}; "
            f"{self.skipped_batches} batch(es) skipped so far (non_finite.policy=skip)"
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
            hp["arch"], hp.get("arch_kwargs"), hp["num_classes"], tuple(x.shape[1:]), build_network
        )
        for logger in trainer.loggers:
            logger.log_hyperparams(self.values)


class LogProvenance(Callback):
    """Record :func:`~reaf_lightning.runs.provenance.provenance` with every stage, as
    ``provenance/<stage>``, so a ``validate`` logged into a trained run keeps the
    ``fit`` command beside its own."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.loggers and trainer.is_global_zero:
            record = {f"provenance/{TrainerFn(stage).value}": provenance()}
            for logger in trainer.loggers:
                logger.log_hyperparams(record)


class TagDataSet(Callback):
    """Tag every W&B run with the data set the trainer's data module feeds
    (``dataset_name``: ``cifar100``, ``cifar10``, ``imagenet``, ``digits``...).

    The tag comes from the data actually used, not from a config file: a recipe's
    tag would follow a row's config even when ``--data`` swaps the data set. W&B
    starts its run before the callbacks' ``setup`` (Lightning starts the loggers'
    experiments first), so the tag is added to the running run.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        name = getattr(trainer.datamodule, "dataset_name", None)
        if not isinstance(name, str) or not name or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                if name not in (run.tags or ()):
                    run.tags = (*(run.tags or ()), name)


def standard_callbacks(seed: int | None = None) -> list[Callback]:
    """The callbacks every ``reaf-lightning`` run gets, in addition to those of its config.

    ``reaf-lightning`` passes them as LightningCLI ``trainer_defaults``, which
    Lightning appends to the configured ``trainer.callbacks`` (and to the
    callbacks of the CLI's groups: ``checkpoint:``, ``non_finite:``).

    Args:
        seed: the run's seed (``seed_everything``), recorded in ``metrics.json``.
    """
    return [
        PreemptionCheckpoint(),
        FiniteCheckpointGuard(),
        LogComplexity(),
        LogProvenance(),
        TagDataSet(),
        PredictionWriter(),
        MetricsFile(seed),
    ]
