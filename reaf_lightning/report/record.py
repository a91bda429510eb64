"""``metrics.json``: what every finished run leaves behind, and how the report reads it back.

Not part of the paper: a reproduction needs several seeds per row (the paper's
gaps between rows are 0.2-0.5 points of top-1 error), and a table of them must
be checkable without W&B. :class:`MetricsFile` writes, after every finished
``fit``, ``validate`` and ``test``, the final metrics as logged (names such as
``val/err1``, fractions in [0, 1]) into ``<run dir>/metrics.json``; each stage
updates only its own key::

    {"seed": 0, "arch": "reaf_resnet50", "params_m": 24.30, "gmacs": 1.34,
     "fit": {"final": {"epoch": 199, "val/acc1": ..., "val/err1": ..., ...},
             "best": {"val/acc1": <max>, "val/err1": <min>, ..., "val/loss": <min>}},
     "validate": {"final": {...}}, "test": {"final": {"test/err1": ...}}}

The run dir is ``trainer.default_root_dir``. The report reads the files back
with :func:`reaf_lightning.report.runs.find_runs`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from reaf_lightning.callbacks import LogComplexity
from reaf_lightning.io import atomic_outputs

__all__ = ["FILENAME", "MetricsFile"]

FILENAME = "metrics.json"


def _logged(trainer: pl.Trainer, prefix: str) -> dict[str, float]:
    """The scalar metrics logged under ``prefix`` (e.g. ``"val/"``), as Python floats."""
    out = {}
    for name, value in trainer.callback_metrics.items():
        if name.startswith(prefix) and getattr(value, "numel", lambda: 1)() == 1:
            out[name] = float(value)
    return dict(sorted(out.items()))


def _better(name: str, new: float, old: float) -> bool:
    """Accuracies improve upwards, errors and losses downwards."""
    if math.isnan(new):
        return False
    higher = name.rsplit("/", 1)[-1].startswith("acc")
    return math.isnan(old) or (new > old if higher else new < old)


class MetricsFile(Callback):
    """Write ``<trainer.default_root_dir>/metrics.json`` after every finished fit/validate/test.

    ``fit.best`` is the best value of every ``val/`` metric over the
    validation epochs of the fit (maximum for accuracies, minimum for errors
    and the loss; each metric on its own, so the best top-1 and best top-5 may
    come from different epochs). Best and final are kept in the checkpoint
    (:meth:`state_dict`), so a fit resumed with ``--ckpt_path last`` still
    knows the epochs before the interruption (and a finished run resumed
    again, as a requeued job would, writes the same file). ``params_m`` and ``gmacs`` are
    the counts :class:`~reaf_lightning.callbacks.LogComplexity` made for the image size
    actually fed (every ``reaf-lightning`` run has both callbacks; without it they are left
    out rather than counted a second time), the seed from Lightning's
    ``PL_GLOBAL_SEED``. Only global rank 0 writes, through
    :func:`reaf_lightning.io.atomic_outputs`, so the file is never half-written.
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

    # -- when to write -------------------------------------------------------------------------
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = _logged(trainer, "val/")
        if trainer.state.fn == TrainerFn.FITTING:
            self._epoch, self._final = trainer.current_epoch, metrics
            for name, value in metrics.items():
                if _better(name, value, self._best.get(name, math.nan)):
                    self._best[name] = value
        elif trainer.state.fn == TrainerFn.VALIDATING:
            self._write(trainer, pl_module, "validate", {"final": metrics})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = self._epoch if self._epoch is not None else trainer.current_epoch - 1
        final = {"epoch": epoch, **self._final}
        self._write(trainer, pl_module, "fit", {"final": final, "best": dict(self._best)})

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module, "test", {"final": _logged(trainer, "test/")})

    def _write(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, content: dict
    ) -> None:
        if not trainer.is_global_zero:
            return
        path = Path(trainer.default_root_dir) / FILENAME
        record = _read_existing(path)
        if stage == "fit" or "seed" not in record:  # evaluating a run keeps its training seed
            seed = os.environ.get("PL_GLOBAL_SEED")
            record["seed"] = int(seed) if seed is not None else None
        record["arch"] = getattr(pl_module, "hparams", {}).get("arch")
        counted = next(
            (c.values for c in trainer.callbacks if isinstance(c, LogComplexity) and c.values),
            None,
        )
        if counted is not None:
            record["params_m"] = counted["complexity/params"] / 1e6
            record["gmacs"] = counted["complexity/macs"] / 1e9
        record[stage] = content
        with atomic_outputs([path]) as (temp,):
            temp.write_text(json.dumps(record, indent=1) + "\n")


def _read_existing(path: Path) -> dict[str, Any]:
    """The file's other stages, to keep them; a damaged file is replaced (with a warning)."""
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        rank_zero_warn(f"replacing the unreadable {path} ({type(err).__name__}: {err})")
        return {}
    return record if isinstance(record, dict) else {}
