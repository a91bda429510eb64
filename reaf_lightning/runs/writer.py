"""The one writer of what a run leaves on disk: its record (``metrics.json``) and its config.

Not part of the paper. :class:`MetricsFile` writes the run record
(:mod:`reaf_lightning.runs.record`) and :class:`LogConfigCallback` the resolved
config; both write atomically, on global rank 0 only, and nothing for a smoke
run (:func:`~reaf_lightning.runs.protect.smoke_reason`). The config is listed in
the record before it is written (:func:`~reaf_lightning.runs.owned.claim`), and a
rewritten record keeps the list of the files the run wrote.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from pydantic import ValidationError

from reaf_lightning.conversion.sources import build_network
from reaf_lightning.errors import ReafError
from reaf_lightning.io import atomic_outputs
from reaf_lightning.layers.spec import is_int
from reaf_lightning.models.complexity import network_complexity
from reaf_lightning.runs.layout import WANDB, RunDir
from reaf_lightning.runs.owned import claim
from reaf_lightning.runs.protect import trainer_smoke_reason
from reaf_lightning.runs.provenance import provenance
from reaf_lightning.runs.record import (
    DataSpec,
    EpochCount,
    NetworkSpec,
    Provenance,
    RecordError,
    RunRecord,
    SplitSeen,
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
    """The data module as the record holds it: class, init settings, the data set as the
    module describes it (``describe()``, as the package's data modules do; of another
    module only what its attributes say), and what the network was fed, read from the
    set-up module (a mean/std computed from the data included)."""
    kind = type(datamodule)
    fed: dict[str, Any] = {}
    try:
        describe = getattr(datamodule, "describe", None)
        if callable(describe):
            fed.update(_json_plain(describe()))
        for key in ("num_classes", "image_size"):
            value = getattr(datamodule, key, None)
            if key not in fed and is_int(value) and value > 0:
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
    validation epochs (each metric on its own). Each stage's ``seen`` counts what
    the last pass over each split fed the network: batches, images and distinct
    labels, summed over the DDP processes at the pass's end (one all-reduce per
    pass; the labels are counted where they lie, without a copy to the host), with
    the trainer's ``limit_<split>_batches``; an evaluation that misses classes of
    the model gets a warning. Best, final, seen and the global step validated last
    are kept in the checkpoint (:meth:`state_dict`), so a resumed fit still knows the
    epochs before the interruption. ``finished`` is true only when the fit ended as
    planned and the weights it ends with are the ones ``fit.final`` validated (or the
    fit has no validation); otherwise ``missing`` says what is missing. A fit stopped
    by ``SIGTERM`` writes its record with ``finished: false``; a later stage updates
    only its own key and keeps the fit's. A record it cannot read is left as it is,
    with a warning (every command refuses one before it starts; this is one replaced
    while it ran). Smoke runs
    (:func:`~reaf_lightning.runs.protect.smoke_reason`) write nothing. ``params_m`` and
    ``gmacs`` are counted by :func:`reaf_lightning.models.complexity.network_complexity`
    for the image size of the first batch. Only global rank 0 writes, atomically,
    keeping the record's list of files.

    Args:
        seed: the run's seed, as configured (``reaf-lightning`` passes its
            ``seed_everything``); ``None``: not seeded, or not known.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._best: dict[str, float] = {}
        self._final: dict[str, float] = {}
        self._epoch: int | None = None
        self._validated_step: int | None = None  # global step whose weights fit.final measured
        self._input_size: tuple[int, ...] | None = None
        self._cost: dict[str, Any] | None = None
        self._seen: dict[str, SplitSeen] = {}  # the last finished pass over each split
        self._tally: dict[str, tuple[torch.Tensor, list[int]]] = {}  # passes under way
        self._warned: set[str] = set()

    # -- what each pass feeds the network ------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("train", pl_module)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._start("val", pl_module)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("test", pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._see(batch, "train")

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: int
    ) -> None:
        self._see(batch, None if trainer.sanity_checking else "val")

    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: int
    ) -> None:
        self._see(batch, "test")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish("train", trainer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._finish("val", trainer)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish("test", trainer)

    def _start(self, split: str, pl_module: pl.LightningModule) -> None:
        """A new pass: images and a histogram of the labels, on the module's device."""
        classes = pl_module.hparams.get("num_classes") if hasattr(pl_module, "hparams") else None
        size = 1 + (classes if isinstance(classes, int) and classes > 0 else 0)
        self._tally[split] = (torch.zeros(size, dtype=torch.long, device=pl_module.device), [0])

    def _see(self, batch: Any, split: str | None) -> None:
        """Count the batch's images and labels; remember the image size first fed."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if self._input_size is None:
            self._input_size = tuple(images.shape[1:])
        if split is None or split not in self._tally:
            return
        counts, batches = self._tally[split]
        batches[0] += 1
        counts[0] += int(images.shape[0])
        labels = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        classes = counts.numel() - 1
        if classes and isinstance(labels, torch.Tensor) and not labels.is_floating_point():
            # scatter_add_, not bincount: on a GPU bincount reads the maximum label back
            index = labels.reshape(-1).to(counts.device).long().clamp(0, classes - 1) + 1
            counts.scatter_add_(0, index, torch.ones_like(index))

    def _finish(self, split: str, trainer: pl.Trainer) -> None:
        """Sum the pass over the processes (every rank calls this) and keep it."""
        if split not in self._tally:
            return
        counts, (batches,) = self._tally.pop(split)
        counts = trainer.strategy.reduce(counts, reduce_op="sum").cpu()
        if split == "train" and batches < trainer.fit_loop.epoch_loop.batch_progress.current.ready:
            return  # resumed mid-epoch: a part of the pass; the last whole one stays
        limit = getattr(trainer, f"limit_{split}_batches", None)
        classes = int((counts[1:] > 0).sum()) if counts.numel() > 1 else None
        seen = SplitSeen(
            limit=limit if isinstance(limit, (int, float)) else None,
            batches=batches,
            images=int(counts[0]),
            classes=classes,
        )
        self._seen[split] = seen
        if split != "train" and classes is not None and classes < counts.numel() - 1:
            self._warn_missing(split, seen, counts.numel() - 1)

    def _warn_missing(self, split: str, seen: SplitSeen, of: int) -> None:
        if split in self._warned:
            return
        self._warned.add(split)
        stage = "validation" if split == "val" else "the test"
        rank_zero_warn(
            f"{stage} saw {seen.classes} of the model's {of} classes ({seen.images} images, "
            f"trainer.limit_{split}_batches={seen.limit}): its {split}/ "
            "metrics describe those classes only; the run record says so and reaf-report "
            "flags the run"
        )

    def _complexity(self, hp: dict[str, Any]) -> dict[str, Any] | None:
        """#params and MACs of the run's network at the fed image size, counted once."""
        if self._cost is None and "arch" in hp and self._input_size is not None:
            size, kwargs = self._input_size, hp.get("arch_kwargs")
            self._cost = network_complexity(
                hp["arch"], kwargs, hp["num_classes"], size, build_network
            )
        return self._cost

    def state_dict(self) -> dict[str, Any]:
        seen = {split: s.model_dump() for split, s in self._seen.items()}
        return {
            "best": dict(self._best),
            "final": dict(self._final),
            "epoch": self._epoch,
            "seen": seen,
            "validated_step": self._validated_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._best = dict(state_dict.get("best", {}))
        self._final = dict(state_dict.get("final", {}))
        self._epoch = state_dict.get("epoch")
        self._seen = {k: SplitSeen(**v) for k, v in state_dict.get("seen", {}).items()}
        self._validated_step = state_dict.get("validated_step")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = _logged(trainer, "val/")
        if trainer.state.fn == TrainerFn.FITTING:
            self._epoch, self._final = trainer.current_epoch, metrics
            self._validated_step = trainer.global_step
            for name, value in metrics.items():
                if _better(name, value, self._best.get(name)):
                    self._best[name] = value
        elif trainer.state.fn == TrainerFn.VALIDATING:
            seen = {"val": self._seen["val"]} if "val" in self._seen else {}
            self._write(trainer, pl_module, "validate", StageMetrics(final=metrics, seen=seen))

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        missing = f"saved during the fit, at global step {trainer.global_step}"
        record = self._record(trainer, pl_module, None, "fit", self._fit_metrics(), missing)
        checkpoint["reaf_run"] = record.to_json_dict()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module, "fit", self._fit_metrics(), self._unvalidated(trainer))

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            during = " (during its validation)" if trainer.validating else ""
            missing = (
                f"stopped by SIGTERM at epoch {trainer.current_epoch}, global step "
                f"{trainer.global_step}{during}; resume with --ckpt_path last"
            )
            self._write(trainer, pl_module, "fit", self._fit_metrics(), missing)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seen = {"test": self._seen["test"]} if "test" in self._seen else {}
        metrics = StageMetrics(final=_logged(trainer, "test/"), seen=seen)
        self._write(trainer, pl_module, "test", metrics)

    def _unvalidated(self, trainer: pl.Trainer) -> str | None:
        """What a fit that ended is missing: the validation of its final weights, if any."""
        if not trainer.enable_validation or self._validated_step == trainer.global_step:
            return None
        last = (
            "nothing validated"
            if self._validated_step is None
            else f"fit.final is from epoch {self._epoch} (global step {self._validated_step})"
        )
        return (
            f"no validation of the final weights (global step {trainer.global_step}): {last}; "
            "reaf-lightning validate --ckpt_path last measures them"
        )

    def _fit_metrics(self) -> StageMetrics:
        seen = {k: v for k, v in self._seen.items() if k in ("train", "val")}
        return StageMetrics(epoch=self._epoch, final=self._final, best=self._best, seen=seen)

    def _write(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        stage: str,
        metrics: StageMetrics,
        missing: str | None = None,
    ) -> None:
        if not trainer.is_global_zero or trainer_smoke_reason(trainer):
            return
        path = RunDir(Path(trainer.default_root_dir)).metrics
        old = None
        if os.path.lexists(path):
            try:
                old = read_record(path)
            except RecordError as err:  # replaced while the command ran: not ours to replace
                rank_zero_warn(f"the {stage} metrics are not recorded: {err}")
                return
        write_record(path, self._record(trainer, pl_module, old, stage, metrics, missing))

    def _record(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        old: RunRecord | None,
        stage: str,
        metrics: StageMetrics,
        missing: str | None,
    ) -> RunRecord:
        """The fit's record (or ``old`` with ``stage`` replaced), from the trainer's state;
        the files listed in ``old`` stay listed. An evaluation in a directory that holds no
        fit's record (only the list of its own files) records what it evaluated, unfinished."""
        key = {"validate": "validate_"}.get(stage, stage)
        if old is not None and stage != "fit" and old.network is not None:
            return old.model_copy(update={key: metrics})
        if stage != "fit":
            missing = f"no fit in this run directory, only {stage}"
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
            finished=missing is None,
            missing=missing,
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
            files=list(old.files) if old is not None else [],
            **{key: metrics},
        )


def claim_for(trainer: pl.Trainer, paths: list[Path]) -> None:
    """List ``paths`` in the run record before they are written, when the trainer keeps one
    (it has a :class:`MetricsFile`, as every ``reaf-lightning`` run); a plain ``Trainer``
    with only an output callback gets no record for it."""
    if any(isinstance(callback, MetricsFile) for callback in trainer.callbacks):
        claim(trainer.default_root_dir, paths)


def claim_logger_folders(trainer: pl.Trainer, stage: str) -> None:
    """List the folders the loggers will write into the run directory, before they start:
    W&B's ``wandb/`` (``wandb_<stage>/``, its own ``save_dir``, for a later stage), a CSV or
    TensorBoard logger's ``<name>/version_<N>``. Folders outside the run directory are not
    the run's."""
    run = RunDir(Path(trainer.default_root_dir))
    folders = []
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger.save_dir is not None:
            save_dir = Path(logger.save_dir)
            own = stage != "fit" and save_dir == run.wandb_save_dir(stage)
            folders.append(save_dir if own else save_dir / WANDB)
        elif isinstance(getattr(logger, "log_dir", None), str):
            folders.append(Path(logger.log_dir))
    inside = os.path.abspath(run.path) + os.sep
    claim(run.path, [f for f in folders if os.path.abspath(f).startswith(inside)])


class LogConfigCallback(SaveConfigCallback):
    """Write the resolved config into the run directory and log it to every logger.

    ``fit`` writes ``config.yaml``; ``validate``/``test``/``predict`` of the same
    run directory write ``config_<stage>.yaml``, so an evaluation never replaces
    the training's record. Rank 0 only, atomically, listed in the run record first.
    """

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if trainer_smoke_reason(trainer):
            return  # a smoke run checks a config; it leaves no record in the run directory
        stage = str(getattr(stage, "value", stage))  # Lightning passes its TrainerFn enum
        config = self.config.clone()
        config.overwrite_run = False  # re-running the saved config must not replace a run
        target = RunDir(Path(trainer.default_root_dir)).config(stage)
        claim(trainer.default_root_dir, [target])
        with atomic_outputs([target]) as (path,):
            path.write_text(self.parser.dump(config, skip_unset=False))
        config.pop("config", None)  # the list of --config paths: not a setting
        config.pop("overwrite_run", None)
        # Not "config": a W&B sweep whose parameter is named `config` locks that key.
        for logger in trainer.loggers:
            logger.log_hyperparams({"resolved_config": config.as_dict()})
