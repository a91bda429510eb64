"""Finished runs, read back from their ``metrics.json`` files, trusting nothing in them.

Every file under the log roots named ``metrics.json`` is untrusted input: it is
read by :func:`reaf_lightning.io.read_bounded` (a regular file of at most
:data:`METRICS_MAX_BYTES`, so a FIFO, a link to ``/dev/zero`` or a huge file is
refused without waiting or filling memory), parsed as JSON (any depth of
nesting is an error line, not a crash) and validated by the pydantic model
:class:`MetricsView`. A file that fails gives one line naming it; the other
runs are still reported.

Each run's *experiment* is its run directory with the trailing ``seed<N>``
part removed (``logs/table3/resnet50/seed2`` -> ``table3/resnet50``), and its
:attr:`Run.identity` says what was trained (network and its arguments, data
module and the settings that change what the network sees, recipe, epochs
planned), so that :mod:`reaf_lightning.report.tables` never averages across
a difference.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

from reaf_lightning.errors import ConfigError, DataError, one_line
from reaf_lightning.io import read_bounded, shown

__all__ = ["FILENAME", "METRICS_MAX_BYTES", "MetricsView", "Run", "experiment_of", "find_runs"]

FILENAME = "metrics.json"
#: Largest metrics.json read (ours: a run's file is about 2 KiB).
METRICS_MAX_BYTES = 1024 * 1024
_SEED_DIR = re.compile(r"seed\d+")
#: Data settings that say where the data is or how fast it loads, not what the network sees.
PLACE_AND_SPEED = frozenset({"root", "num_workers", "pin_memory", "download", "persistent_workers"})

Number = StrictInt | float | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class StageView(_Model):
    """``{"final": {...}, "best": {...}}`` of one stage: metric name -> number."""

    final: dict[StrictStr, Number] = {}
    best: dict[StrictStr, Number] = {}


class NetworkView(_Model):
    """What network a run trained: its registry name and ``create_model`` arguments."""

    arch: StrictStr
    kwargs: dict[StrictStr, Any] = {}


class DataView(_Model):
    """The run's data module: class path and init arguments."""

    class_path: StrictStr
    init_args: dict[StrictStr, Any] = {}


class MetricsView(_Model):
    """The parts of ``metrics.json`` the report reads (unknown keys are ignored).

    The run record's fields (``network``, ``data``, ``recipe``, epochs, ``finished``)
    are optional, so that files written before the record existed are still read;
    such runs are grouped by ``arch`` only, and say so.
    """

    seed: StrictInt | None = None
    arch: StrictStr | None = None
    params_m: float | None = None
    gmacs: float | None = None
    fit: StageView | None = None
    network: NetworkView | None = None
    data: DataView | None = None
    recipe: dict[StrictStr, Any] | None = None
    epochs_planned: StrictInt | None = None
    epochs_reached: StrictInt | None = None
    finished: StrictBool | None = None


@dataclass(frozen=True)
class Run:
    """One run directory's validated ``metrics.json`` and the experiment it belongs to."""

    run_dir: Path
    experiment: str
    experiment_dir: Path
    record: MetricsView
    path: Path = field(compare=False)

    @property
    def seed(self) -> int | None:
        return self.record.seed

    def fit(self, kind: str) -> dict[str, float | None]:
        """``fit.final`` or ``fit.best`` (empty when the run has no finished fit)."""
        return dict(getattr(self.record.fit, kind, None) or {})

    @property
    def finished(self) -> bool:
        """A fit that ended: the record says so, or (older files) ``fit.final`` is there."""
        if self.record.finished is not None:
            return self.record.finished
        return bool(self.fit("final"))

    @property
    def epochs(self) -> tuple[int | None, int | None]:
        """(epochs reached, epochs planned); older files know only the last epoch index."""
        reached = self.record.epochs_reached
        if reached is None:
            last = self.fit("final").get("epoch")
            known = isinstance(last, (int, float)) and math.isfinite(last)
            reached = int(last) + 1 if known else None
        return reached, self.record.epochs_planned

    @property
    def data_class(self) -> str | None:
        return self.record.data.class_path.rsplit(".", 1)[-1] if self.record.data else None

    @property
    def identity(self) -> tuple[tuple[str, str], ...]:
        """What was trained, as ``(aspect, value)`` pairs: runs differing here are not averaged."""
        rec = self.record
        parts = [("network", rec.network.arch if rec.network else str(rec.arch))]
        if rec.network and rec.network.kwargs:
            parts.append(("network arguments", _canonical(rec.network.kwargs)))
        if rec.data:
            seen = {k: v for k, v in rec.data.init_args.items() if k not in PLACE_AND_SPEED}
            parts.append(("data", f"{self.data_class} {_canonical(seen)}"))
        if rec.recipe:
            parts.append(("recipe", _canonical(rec.recipe)))
        if rec.epochs_planned is not None:
            parts.append(("epochs planned", str(rec.epochs_planned)))
        return tuple(parts)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def experiment_of(run_dir: Path, root: Path) -> tuple[str, Path]:
    """The experiment of a run dir: its path with the trailing ``seed<N>`` part(s) removed.

    Returns the name relative to ``root`` (``table3/resnet50`` for
    ``logs/table3/resnet50/seed2`` under ``logs``) and the experiment directory.
    """
    experiment_dir = run_dir
    while _SEED_DIR.fullmatch(experiment_dir.name) and experiment_dir != root:
        experiment_dir = experiment_dir.parent
    try:
        name = experiment_dir.relative_to(root).as_posix()
    except ValueError:
        name = experiment_dir.name
    return shown(name if name not in ("", ".") else experiment_dir.name), experiment_dir


def read_metrics(path: Path) -> MetricsView:
    """One ``metrics.json``, validated.

    Raises:
        DataError: one line naming the file and what is wrong with it.
    """
    raw = read_bounded(path, METRICS_MAX_BYTES, what="metrics file", error=DataError)
    try:
        content = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{shown(path)}: not UTF-8 text") from None
    except RecursionError:
        raise DataError(f"{shown(path)}: JSON nested too deeply") from None
    except ValueError as err:
        raise DataError(f"{shown(path)}: not valid JSON ({one_line(err)})") from None
    if not isinstance(content, dict):
        raise DataError(f"{shown(path)}: holds a JSON {type(content).__name__}, not an object")
    try:
        return MetricsView.model_validate(content)
    except RecursionError:
        raise DataError(f"{shown(path)}: JSON nested too deeply") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        raise DataError(
            f"{shown(path)}: {where}: {first['msg']} ({err.error_count()} problem(s))"
        ) from None


def find_runs(
    roots: Sequence[str | os.PathLike[str]],
) -> tuple[list[Run], list[str], list[Path]]:
    """Every ``metrics.json`` under ``roots``, each run dir once, and the files left out.

    Returns the runs (finished or not; :attr:`Run.finished` says), one line per
    file that could not be used, and every metrics file found (the command's inputs).
    Directories are walked without following links (a link loop cannot trap the
    walk); unreadable directories give a line too.

    Raises:
        ConfigError: a root does not exist or is not a directory.
    """
    runs: list[Run] = []
    skipped: list[str] = []
    inputs: list[Path] = []
    seen: set[Path] = set()
    for root_arg in roots:
        root = Path(root_arg)
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a directory"
            raise ConfigError(
                f"log root {shown(root)} {what}; give the directories runs were written to"
            )
        found: list[Path] = []

        def unreadable(err: OSError) -> None:
            skipped.append(f"{shown(err.filename)}: not searched ({err.strerror})")

        for directory, _, files in os.walk(root, onerror=unreadable):
            if FILENAME in files:
                found.append(Path(directory) / FILENAME)
        inputs += found
        for path in sorted(found):
            run_dir = path.parent
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            try:
                record = read_metrics(path)
            except DataError as err:
                skipped.append(str(err))
                continue
            name, experiment_dir = experiment_of(run_dir, root)
            runs.append(Run(run_dir, name, experiment_dir, record, path))
    return runs, skipped, inputs
