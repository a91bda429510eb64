"""``metrics.json``: what every finished run leaves behind, and how the report reads it back.

Not part of the paper: a reproduction needs several seeds per row (the paper's
gaps between rows are 0.2-0.5 points of top-1 error), and a table of them must
be checkable without W&B. Every run writes its record
(:class:`reaf_lightning.record.RunRecord`) into ``<run dir>/metrics.json``
(:class:`reaf_lightning.callbacks.MetricsFile`); this module reads them back.

The run dir is ``trainer.default_root_dir``. :func:`find_runs` collects the
files under one or more log roots and names each run's *experiment*: its run
dir with the trailing ``seed<N>`` component removed, so that the seeds of one
configuration form one group.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reaf_lightning.errors import ConfigError
from reaf_lightning.rundir import METRICS, is_seed_dir

__all__ = ["FILENAME", "Run", "experiment_of", "find_runs"]

FILENAME = METRICS


# -- reading runs back -------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One run dir's ``metrics.json``, and the experiment the run belongs to."""

    run_dir: Path
    experiment: str
    experiment_dir: Path
    metrics: dict[str, Any]

    @property
    def seed(self) -> int | None:
        return self.metrics.get("seed")

    def fit(self, kind: str) -> dict[str, float]:
        """``fit.final`` or ``fit.best`` (empty when the run has no finished fit)."""
        return self.metrics.get("fit", {}).get(kind, {})


def experiment_of(run_dir: Path, root: Path) -> tuple[str, Path]:
    """The experiment of a run dir: its path with the trailing ``seed<N>`` part(s) removed.

    Returns the name relative to ``root`` (``table3/resnet50`` for
    ``logs/table3/resnet50/seed2`` under ``logs``) and the experiment directory.
    """
    experiment_dir = run_dir
    while is_seed_dir(experiment_dir.name) and experiment_dir != root:
        experiment_dir = experiment_dir.parent
    try:
        name = experiment_dir.relative_to(root).as_posix()
    except ValueError:
        name = experiment_dir.name
    return (name if name not in ("", ".") else experiment_dir.name), experiment_dir


def find_runs(roots: Sequence[str | os.PathLike[str]]) -> tuple[list[Run], list[str]]:
    """Every ``metrics.json`` under ``roots``, each run dir once, and what was skipped.

    Returns the runs with a finished fit and one line per file left out
    (unreadable, or no finished ``fit`` yet: a run in progress).

    Raises:
        ConfigError: a root does not exist or is not a directory.
    """
    runs: list[Run] = []
    skipped: list[str] = []
    seen: set[Path] = set()
    for root_arg in roots:
        root = Path(root_arg)
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a directory"
            raise ConfigError(f"log root {root} {what}; give the directories runs were written to")
        for path in sorted(root.rglob(FILENAME)):
            run_dir = path.parent
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            try:
                metrics = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                skipped.append(f"{path}: unreadable ({type(err).__name__}: {err})")
                continue
            if not isinstance(metrics, dict) or not metrics.get("fit", {}).get("final"):
                skipped.append(f"{path}: no finished fit yet")
                continue
            name, experiment_dir = experiment_of(run_dir, root)
            runs.append(Run(run_dir, name, experiment_dir, metrics))
    return runs, skipped
