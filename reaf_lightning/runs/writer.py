"""The one writer of what a run leaves on disk: its record (``metrics.json``) and its config.

Not part of the paper. :class:`MetricsFile` writes the run record
(:mod:`reaf_lightning.runs.record`) and :class:`LogConfigCallback` the resolved
config; both write atomically, on global rank 0 only, and nothing for a smoke
run (:func:`~reaf_lightning.runs.protect.smoke_reason`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from pydantic import ValidationError

from reaf_lightning.conversion.sources import build_network
from reaf_lightning.errors import ReafError
from reaf_lightning.io import atomic_outputs
from reaf_lightning.layers.spec import is_int
from reaf_lightning.models.complexity import network_complexity
from reaf_lightning.runs.layout import RunDir
from reaf_lightning.runs.protect import trainer_smoke_reason
from reaf_lightning.runs.provenance import provenance
from reaf_lightning.runs.record import (
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

#: Class names are recorded up to this JSON size (ImageNet-21k's 21,841 ids take 270 kB); a
#: larger list is left out, so that a record stays far below what a reader accepts.
MAX_CLASS_NAMES_BYTES = 1 << 19


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


def _data_spec(datamodule: Any) -> DataSpec:
    """The data module as the record holds it: class, init settings, and what the network was
    fed, read from the set-up module (a mean/std computed from the data included)."""
    kind = type(datamodule)
    fed: dict[str, Any] = {}
    try:
        for key in ("num_classes", "image_size"):
            value = getattr(datamodule, key, None)
            if is_int(value) and value > 0:
                fed[key] = value
        for key in ("mean", "std"):
            value = getattr(datamodule, key, None)
            if isinstance(value, (list, tuple)) and all(isinstance(v, float | int) for v in value):
                fed[key] = [float(v) for v in value]
        classes = getattr(datamodule, "classes", None)
    except (OSError, ReafError):  # a module whose files went away: it says less
        classes = None
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        if len(json.dumps(list(classes))) <= MAX_CLASS_NAMES_BYTES:
            fed["classes"] = list(classes)
    spec = {
        "class_path": f"{kind.__module__}.{kind.__qualname__}",
        "init_args": _json_plain(dict(getattr(datamodule, "hparams", {}))),
    }
    try:
        return DataSpec(**spec, **fed)
    except ValidationError:  # a third-party module's odd values: the record keeps its settings
        return DataSpec(**spec)


class MetricsFile(Callback):
    """Write the run record (:class:`~reaf_lightning.runs.record.RunRecord`) to ``metrics.json``
    after every finished fit/validate/test, and into every checkpoint as ``reaf_run``.

    ``fit.best`` is the best value of every ``val/`` metric over the fit's
    validation epochs (each metric on its own). Best and final are kept in the
    checkpoint (:meth:`state_dict`), so a resumed fit still knows the epochs
    before the interruption. A fit stopped by ``SIGTERM`` writes its record with
    ``finished: false``; a later stage updates only its own key and keeps the
    fit's (a record it cannot read is left as it is, with a warning). Smoke runs
    (:func:`~reaf_lightning.runs.protect.smoke_reason`) write nothing. ``params_m`` and
    ``gmacs`` are counted by :func:`reaf_lightning.models.complexity.network_complexity`
    for the image size of the first batch. Only global rank 0 writes, atomically.

    Args:
        seed: the run's seed, as configured (``reaf-lightning`` passes its
            ``seed_everything``); ``None``: not seeded, or not known.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._best: dict[str, float] = {}
        self._final: dict[str, float] = {}
        self._epoch: int | None = None
        self._input_size: tuple[int, ...] | None = None
        self._cost: dict[str, Any] | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._see(batch)

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: int
    ) -> None:
        self._see(batch)

    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: int
    ) -> None:
        self._see(batch)

    def _see(self, batch: Any) -> None:
        """Remember the image size actually fed (the first batch's)."""
        if self._input_size is None:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._input_size = tuple(images.shape[1:])

    def _complexity(self, hp: dict[str, Any]) -> dict[str, Any] | None:
        """#params and MACs of the run's network at the fed image size, counted once."""
        if self._cost is None and "arch" in hp and self._input_size is not None:
            size, kwargs = self._input_size, hp.get("arch_kwargs")
            self._cost = network_complexity(
                hp["arch"], kwargs, hp["num_classes"], size, build_network
            )
        return self._cost

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

    def _record(
        self,
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
        data = _data_spec(datamodule) if datamodule is not None else None
        recipe = {k: v for k, v in hp.items() if k not in ("arch", "arch_kwargs", "num_classes")}
        batch = getattr(datamodule, "batch_size", None)
        recipe.update(
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            world_size=trainer.world_size,
            global_batch=batch * trainer.world_size * trainer.accumulate_grad_batches
            if isinstance(batch, int)
            else None,
        )
        counted = self._complexity(hp)
        planned = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        return RunRecord(
            seed=self.seed,
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


class LogConfigCallback(SaveConfigCallback):
    """Write the resolved config into the run directory and log it to every logger.

    ``fit`` writes ``config.yaml``; ``validate``/``test``/``predict`` of the same
    run directory write ``config_<stage>.yaml``, so an evaluation never replaces
    the training's record. Rank 0 only, atomically.
    """

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if trainer_smoke_reason(trainer):
            return  # a smoke run checks a config; it leaves no record in the run directory
        stage = str(getattr(stage, "value", stage))  # Lightning passes its TrainerFn enum
        config = self.config.clone()
        config.overwrite_run = False  # re-running the saved config must not replace a run
        with atomic_outputs([RunDir(Path(trainer.default_root_dir)).config(stage)]) as (path,):
            path.write_text(self.parser.dump(config, skip_unset=False))
        config.pop("config", None)  # the list of --config paths: not a setting
        config.pop("overwrite_run", None)
        # Not "config": a W&B sweep whose parameter is named `config` locks that key.
        for logger in trainer.loggers:
            logger.log_hyperparams({"resolved_config": config.as_dict()})
