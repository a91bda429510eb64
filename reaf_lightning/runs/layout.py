"""The run directory: the one place that names the files a run consists of.

Not part of the paper. A run is ``<root>/seed<N>/`` (``trainer.default_root_dir``
with the seed appended by ``reaf-lightning``)::

    seed0/
      config.yaml            resolved config of the fit (config_<stage>.yaml of later stages)
      checkpoints/           last.ckpt (the newest state, always) and best-epoch=NNN.ckpt
      metrics.json           the run record (reaf_lightning.runs.record)
      predictions.csv        top-k predictions of `predict`
      selectivity.csv        class selectivity logged during training (analysis callback)
      wandb/                 W&B's files of the fit; their run id is the run's W&B id
      wandb_<stage>/         W&B's files of a later stage's own run (validate, test, predict)
      .lock, .lock.holder    held by the one process working on the run, and who that is
                             (both removed when it ends)

What of this a run owns is what its record lists (:mod:`reaf_lightning.runs.owned`).

Everything else asks this module for these names, so the layout can be read
in one place (and in ``docs/runs.md``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = "logs"


CHECKPOINTS = "checkpoints"


LAST = "last"  # Lightning's ModelCheckpoint.CHECKPOINT_NAME_LAST, written as last.ckpt


CHECKPOINT_SUFFIX = ".ckpt"


BEST_FILENAME = "best-{epoch:03d}"  # ModelCheckpoint's filename template of the best checkpoint


METRICS = "metrics.json"


PREDICTIONS = "predictions.csv"


SELECTIVITY = "selectivity.csv"


WANDB = "wandb"


LOCK = ".lock"


LOCK_HOLDER = ".lock.holder"


_SEED_DIR = re.compile(r"seed\d+")


def is_seed_dir(name: str) -> bool:
    """True for a folder name of the ``seed<N>`` form (the seeds of one experiment)."""
    return _SEED_DIR.fullmatch(name) is not None


def seed_name(seed: int) -> str:
    """``seed<N>``: the run directory of one seed, and the suffix of its W&B run name."""
    return f"seed{seed}"


def run_dir_for_seed(root: str | os.PathLike[str], seed: int | None) -> Path:
    """``<root>/seed<N>``; ``root`` itself when it already ends so, or without a seed."""
    path = Path(root)
    if seed is None or path.name == seed_name(seed):
        return path
    return path / seed_name(seed)


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created or read here).

    Args:
        path: the run directory, ``trainer.default_root_dir``.
        checkpoint_dir: where its checkpoints go, when configured elsewhere
            (``checkpoint.dirpath``); default ``<path>/checkpoints``.
    """

    path: Path
    checkpoint_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.checkpoint_dir is None:
            object.__setattr__(self, "checkpoint_dir", self.path / CHECKPOINTS)
        else:
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))

    def config(self, stage: str = "fit") -> Path:
        """``config.yaml`` for ``fit``, ``config_<stage>.yaml`` for the later stages."""
        return self.path / ("config.yaml" if stage == "fit" else f"config_{stage}.yaml")

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / (LAST + CHECKPOINT_SUFFIX)

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def selectivity(self) -> Path:
        return self.path / SELECTIVITY

    @property
    def wandb(self) -> Path:
        return self.path / WANDB

    def wandb_save_dir(self, stage: str = "fit") -> Path:
        """The W&B ``save_dir`` of a stage: the run directory for ``fit`` (``wandb/``, whose
        run id the run keeps), ``wandb_<stage>/`` for a later stage's own W&B run."""
        return self.path if stage == "fit" else self.path / f"{WANDB}_{stage}"

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def lock_holder(self) -> Path:
        return self.path / LOCK_HOLDER

    def checkpoints(self) -> list[Path]:
        """The checkpoint files there now (hidden temporaries of atomic writes excluded)."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = self.checkpoint_dir.glob("*" + CHECKPOINT_SUFFIX)
        return sorted(p for p in found if not p.name.startswith("."))

    def outputs(self, stage: str = "fit") -> list[Path]:
        """The files and folders of fixed name that ``stage`` writes into the run directory,
        besides the record (``metrics.json``), checkpoints and the loggers' numbered folders:
        ``fit`` its config, ``selectivity.csv`` and ``wandb/``; a later stage its
        ``config_<stage>.yaml`` and ``wandb_<stage>/``, and ``predict`` ``predictions.csv``."""
        if stage == "fit":
            return [self.config(), self.selectivity, self.wandb]
        named = [self.config(stage), self.wandb_save_dir(stage)]
        return named + [self.predictions] if stage == "predict" else named
