"""The callbacks every ``reaf-lightning`` run gets (:func:`standard_callbacks`). None is
part of the paper; they keep long runs safe, resumable and traceable.

* :class:`~reaf_lightning.checkpointing.PreemptionCheckpoint` saves ``last.ckpt``
  on ``SIGTERM`` (``reaf-lightning`` exits with status 143).
* :class:`NonFiniteLossPolicy` and
  :class:`~reaf_lightning.checkpointing.FiniteCheckpointGuard`: a NaN/inf
  loss stops the run (exit 3) or skips the batch, and a checkpoint with
  non-finite weights is never written, so the last good one survives.
* :class:`LogComplexity` and :class:`LogProvenance` record #params/MACs and
  what produced the run (package version, git commit, command line).
* :class:`~reaf_lightning.predictions.PredictionWriter` writes
  ``predictions.csv`` into the run directory after ``predict``.
* :class:`MetricsFile` writes the run record (``metrics.json``, and ``reaf_run``
  in every checkpoint); smoke runs (:func:`~reaf_lightning.rundir.smoke_reason`) write
  nothing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from reaf_lightning.checkpointing import (
    NUMERICAL_ADVICE,
    FiniteCheckpointGuard,
    PreemptionCheckpoint,
    kept_checkpoint,
)
from reaf_lightning.errors import NumericalError
from reaf_lightning.loggers import provenance
from reaf_lightning.models.complexity import network_complexity
from reaf_lightning.predictions import PredictionWriter
from reaf_lightning.record import (
    DataSpec,
    EpochCount,
    NetworkSpec,
    Provenance,
    RecordError,
    RunRecord,
    StageMetrics,
    read_record,
    write_record,
)
from reaf_lightning.rundir import RunDir, trainer_smoke_reason

__all__ = [
    "LogComplexity",
    "LogProvenance",
    "MetricsFile",
    "NonFiniteLossPolicy",
    "standard_callbacks",
]


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
                f"(model.nan_policy=stop) and {kept_checkpoint(trainer)}; {NUMERICAL_ADVICE}, "
                "or set model.nan_policy=skip to skip such batches"
            )
        self._consecutive += 1
        limit = pl_module.hparams.get("max_consecutive_skips", 10)
        if self._consecutive >= limit:
            raise NumericalError(
                f"{limit} consecutive non-finite training losses (last {value} at {where}): the "
                f"model has most likely diverged; training stopped and "
                f"{kept_checkpoint(trainer)}; {NUMERICAL_ADVICE}"
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


# -- the run record --------------------------------------------------------------------------
def _logged(trainer: pl.Trainer, prefix: str) -> dict[str, float]:
    """The scalar metrics logged under ``prefix`` (e.g. ``"val/"``), as Python floats."""
    out = {}
    for name, value in trainer.callback_metrics.items():
        if name.startswith(prefix) and getattr(value, "numel", lambda: 1)() == 1:
            out[name] = float(value)
    return dict(sorted(out.items()))


def _better(name: str, new: float, old: float | None) -> bool:
    """Accuracies improve upwards, errors and losses downwards; NaN never improves."""
    if math.isnan(new):
        return False
    higher = name.rsplit("/", 1)[-1].startswith("acc")
    return old is None or math.isnan(old) or (new > old if higher else new < old)


def _json_plain(value: Any) -> Any:
    """Settings as JSON types (tuples as lists, paths and other objects as strings)."""
    return json.loads(json.dumps(value, default=str))


class MetricsFile(Callback):
    """Write the run record (:class:`~reaf_lightning.record.RunRecord`) to ``metrics.json``
    after every finished fit/validate/test, and into every checkpoint as ``reaf_run``.

    ``fit.best`` is the best value of every ``val/`` metric over the fit's
    validation epochs (each metric on its own). Best and final are kept in the
    checkpoint (:meth:`state_dict`), so a resumed fit still knows the epochs
    before the interruption. A fit stopped by ``SIGTERM`` writes its record with
    ``finished: false``; a later stage updates only its own key and keeps the
    fit's (a record it cannot read is left as it is, with a warning). Smoke runs
    (:func:`~reaf_lightning.rundir.smoke_reason`) write nothing. ``params_m`` and
    ``gmacs`` come from :class:`LogComplexity`. Only global rank 0 writes,
    atomically.
    """

    def __init__(self) -> None:
        self._best: dict[str, float] = {}
        self._final: dict[str, float] = {}
        self._epoch: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self._best), "final": dict(self._final), "epoch": self._epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._best = dict(state_dict.get("best", {}))
        self._final = dict(state_dict.get("final", {}))
        self._epoch = state_dict.get("epoch")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = _logged(trainer, "val/")
        if trainer.state.fn == TrainerFn.FITTING:
            self._epoch, self._final = trainer.current_epoch, metrics
            for name, value in metrics.items():
                if _better(name, value, self._best.get(name)):
                    self._best[name] = value
        elif trainer.state.fn == TrainerFn.VALIDATING:
            self._write(trainer, pl_module, "validate", StageMetrics(final=metrics))

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        record = self._record(trainer, pl_module, None, "fit", self._fit_metrics(), False)
        checkpoint["reaf_run"] = record.to_json_dict()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module, "fit", self._fit_metrics(), finished=True)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            self._write(trainer, pl_module, "fit", self._fit_metrics(), finished=False)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module, "test", StageMetrics(final=_logged(trainer, "test/")))

    def _fit_metrics(self) -> StageMetrics:
        return StageMetrics(epoch=self._epoch, final=self._final, best=self._best)

    def _write(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        stage: str,
        metrics: StageMetrics,
        finished: bool = False,
    ) -> None:
        if not trainer.is_global_zero or trainer_smoke_reason(trainer):
            return
        path = RunDir(Path(trainer.default_root_dir)).metrics
        old = None
        if stage != "fit" and path.exists():
            try:
                old = read_record(path)
            except RecordError as err:  # another program's file, or an older format: keep it
                rank_zero_warn(f"the {stage} metrics are not recorded: {err}")
                return
        write_record(path, self._record(trainer, pl_module, old, stage, metrics, finished))

    @staticmethod
    def _record(
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        old: RunRecord | None,
        stage: str,
        metrics: StageMetrics,
        finished: bool,
    ) -> RunRecord:
        """The fit's record (or ``old`` with ``stage`` replaced), from the trainer's state."""
        if old is not None:
            return old.model_copy(update={{"validate": "validate_"}.get(stage, stage): metrics})
        hp = dict(getattr(pl_module, "hparams", {}))
        network = None
        if "arch" in hp:
            kwargs = _json_plain(hp.get("arch_kwargs") or {})
            network = NetworkSpec(arch=hp["arch"], kwargs=kwargs, num_classes=hp["num_classes"])
        datamodule = getattr(trainer, "datamodule", None)
        data = None
        if datamodule is not None:
            kind = type(datamodule)
            data = DataSpec(
                class_path=f"{kind.__module__}.{kind.__qualname__}",
                init_args=_json_plain(dict(getattr(datamodule, "hparams", {}))),
            )
        recipe = {k: v for k, v in hp.items() if k not in ("arch", "arch_kwargs", "num_classes")}
        batch = getattr(datamodule, "batch_size", None)
        recipe.update(
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            world_size=trainer.world_size,
            global_batch=batch * trainer.world_size * trainer.accumulate_grad_batches
            if isinstance(batch, int)
            else None,
        )
        seed = os.environ.get("PL_GLOBAL_SEED")
        counted = next(
            (c.values for c in trainer.callbacks if isinstance(c, LogComplexity) and c.values),
            None,
        )
        planned = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        return RunRecord(
            seed=int(seed) if seed is not None else None,
            finished=finished,
            network=network,
            data=data,
            recipe=_json_plain(recipe),
            epochs=EpochCount(
                planned=planned, reached=trainer.fit_loop.epoch_progress.current.completed
            ),
            precision=str(trainer.precision),
            provenance=Provenance(**provenance()),
            params_m=counted["complexity/params"] / 1e6 if counted else None,
            gmacs=counted["complexity/macs"] / 1e9 if counted else None,
            **{{"validate": "validate_"}.get(stage, stage): metrics},
        )


def standard_callbacks() -> list[Callback]:
    """The callbacks every ``reaf-lightning`` run gets, in addition to those of its config.

    ``reaf-lightning`` passes them as LightningCLI ``trainer_defaults``, which
    Lightning appends to the configured ``trainer.callbacks``.
    """
    return [
        PreemptionCheckpoint(),
        NonFiniteLossPolicy(),
        FiniteCheckpointGuard(),
        LogComplexity(),
        LogProvenance(),
        PredictionWriter(),
        MetricsFile(),
    ]
