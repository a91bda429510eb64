"""Runs, read back from their ``metrics.json`` run records, trusting nothing in them.

Every file under the log roots named ``metrics.json`` is untrusted input: it is
read by :func:`reaf_lightning.runs.record.read_record` (a regular file of bounded
size, through :func:`reaf_lightning.io.read_bounded`, and bounded nesting, so a
FIFO, a link to ``/dev/zero``, a huge or deeply nested file is refused without
waiting or filling memory) and validated by the run
record's pydantic schema (:class:`reaf_lightning.runs.record.RunRecord`). A file that
fails gives one line naming it; the other runs are still reported.

Each run's *experiment* is its run directory with the trailing ``seed<N>`` part
removed (``logs/table3/resnet50/seed2`` -> ``table3/resnet50``), and its
:attr:`Run.identity` says what was trained (network and its arguments, data
module and the settings that change what the network sees, the data set, image
size and augmentation, how much of each split was trained and validated on,
precision, recipe, epochs), so that :mod:`reaf_lightning.report.summary` never
averages across a difference; a :class:`Run` is what :mod:`reaf_lightning.paper.compare`
checks against the paper's recipe (:class:`~reaf_lightning.paper.compare.TrainedRun`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reaf_lightning.errors import ConfigError
from reaf_lightning.io import shown
from reaf_lightning.runs.layout import METRICS, is_seed_dir
from reaf_lightning.runs.record import RecordError, RunRecord, read_record

__all__ = ["FILENAME", "Run", "experiment_of", "find_runs"]

FILENAME = METRICS
#: The splits a run record counts images of, in the order they are shown.
SPLITS = ("train", "val", "test")
#: Data settings that say where the data is or how fast it loads, not what the network sees.
PLACE_AND_SPEED = frozenset({"root", "num_workers", "pin_memory", "download", "persistent_workers"})


@dataclass(frozen=True)
class Run:
    """One run directory's validated record and the experiment it belongs to."""

    run_dir: Path
    experiment: str
    experiment_dir: Path
    record: RunRecord
    path: Path = field(compare=False)

    @property
    def seed(self) -> int | None:
        return self.record.seed

    def fit(self, kind: str) -> dict[str, float | None]:
        """``fit.final`` or ``fit.best`` (empty when the run has no fit metrics)."""
        return dict(getattr(self.record.fit, kind, None) or {})

    @property
    def finished(self) -> bool:
        return self.record.finished

    @property
    def epochs(self) -> tuple[int | None, int | None]:
        """(epochs reached, epochs planned)."""
        return self.record.epochs.reached, self.record.epochs.planned

    @property
    def network_arch(self) -> str | None:
        return self.record.network.arch if self.record.network else None

    @property
    def network_arguments(self) -> dict[str, Any] | None:
        """The network's keyword arguments with ``num_classes`` (``None``: not recorded)."""
        network = self.record.network
        return {**network.kwargs, "num_classes": network.num_classes} if network else None

    @property
    def data_class(self) -> str | None:
        return self.record.data.class_path.rsplit(".", 1)[-1] if self.record.data else None

    @property
    def dataset(self) -> str | None:
        """The data set's name as its data module gave it (``cifar100``), ``None``: not given."""
        return self.record.data.dataset if self.record.data else None

    @property
    def num_classes(self) -> int | None:
        """The classes the network was built for (those of the data where it is not known)."""
        rec = self.record
        return (
            rec.network.num_classes if rec.network else rec.data.num_classes if rec.data else None
        )

    def data_seen(self, split: str) -> str | None:
        """What the fit's last pass over ``split`` (``train``, ``val``) fed, in words."""
        seen = self.record.fit.seen.get(split) if self.record.fit else None
        if seen is None:
            return None
        size = self.record.data.sizes.get(split) if self.record.data else None
        text = f"{seen.images} of {'?' if size is None else size} images"
        text += f" in {seen.batches} batches (limit_{split}_batches={seen.limit})"
        if split != "train" and seen.classes is not None:  # a training pass is random
            text += f", {seen.classes} of {self.num_classes} classes"
        return text

    @property
    def partial_data(self) -> list[str]:
        """How the fit fell short of whole splits: part of the training images per epoch,
        part of the validation images, part of the classes in validation."""
        fit, data = self.record.fit, self.record.data
        notes = []
        for split, what in (("train", "training images per epoch"), ("val", "validation images")):
            seen = fit.seen.get(split) if fit else None
            if seen is None:
                continue
            size = data.sizes.get(split) if data else None
            limit = f"limit_{split}_batches={seen.limit}"
            verb = "trained on" if split == "train" else "validated on"
            if size is not None and seen.images < size:  # (DDP padding only ever adds)
                if split == "val" or seen.limit not in (None, 1.0):  # not drop_last's rest
                    notes.append(f"{verb} {seen.images} of {size} {what} ({limit})")
            elif size is None and seen.limit not in (None, 1.0):
                notes.append(f"{verb} part of the {what} ({limit})")
        seen, classes = (fit.seen.get("val") if fit else None), self.num_classes
        if seen is not None and seen.classes is not None and classes and seen.classes < classes:
            notes.append(f"validated on {seen.classes} of {classes} classes")
        return notes

    @property
    def identity(self) -> tuple[tuple[str, str], ...]:
        """What was trained, as ``(aspect, value)`` pairs: runs differing here are not averaged."""
        rec = self.record
        parts = [("network", str(self.network_arch))]
        if self.network_arguments is not None:
            parts.append(("network arguments", _canonical(self.network_arguments)))
        if rec.data:
            seen = {k: v for k, v in rec.data.init_args.items() if k not in PLACE_AND_SPEED}
            parts.append(("data", f"{self.data_class} {_canonical(seen)}"))
            data = rec.data
            splits = ", ".join(f"{k} {data.sizes[k]}" for k in SPLITS if k in data.sizes)
            described = {
                "data set": f"{data.dataset} ({data.num_classes} classes; {splits or '?'})",
                "image size": data.image_size,
                "augmentation": data.augmentation,
            }
            if data.dataset is not None:
                parts += [(k, str(v)) for k, v in described.items() if v is not None]
        for split, aspect in (("train", "trained on"), ("val", "validated on")):
            if self.data_seen(split) is not None:
                parts.append((aspect, str(self.data_seen(split))))
        if rec.precision is not None:
            parts.append(("precision", rec.precision))
        if rec.recipe:
            parts.append(("recipe", _canonical(rec.recipe)))
        if rec.epochs.planned is not None:
            parts.append(("epochs planned", str(rec.epochs.planned)))
        # a fit stopped early by its own rule trained fewer epochs
        parts.append(("epochs trained", str(rec.epochs.reached)))
        return tuple(parts)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


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
    return shown(name if name not in ("", ".") else experiment_dir.name), experiment_dir


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
                record = read_record(path)
            except RecordError as err:
                skipped.append(shown(str(err)))
                continue
            name, experiment_dir = experiment_of(run_dir, root)
            runs.append(Run(run_dir, name, experiment_dir, record, path))
    return runs, skipped, inputs
