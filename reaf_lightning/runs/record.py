"""The run record: what a run is and what it reached, in ``metrics.json`` and in its checkpoints.

Not part of the paper. A reproduction compares many runs (several seeds per
row of the paper's tables, whose gaps are 0.2-0.5 points of top-1 error), so
each run says what it is instead of leaving readers to guess from folder names:
the network and its arguments, the data module and its settings, the recipe,
epochs planned and reached, the seed, whether it finished, the precision that
actually ran and what produced it (package version and commit), beside the
metrics. :class:`RunRecord` is its schema (pydantic), :func:`write_record`
writes it atomically and :func:`read_record` reads one back as untrusted input:
bounded in size and depth, regular files only, every failure one line naming
the file (:class:`RecordError`, exit status 2).

An example (``fit.final`` and ``fit.best`` as logged, fractions in [0, 1], a
metric that was not finite is ``null``; ``fit.epoch`` is the last validated epoch)::

    {"format": "reaf-run/1", "seed": 0, "finished": true,
     "network": {"arch": "reaf_resnet18", "kwargs": {"reaf": "4-3-4"}, "num_classes": 10},
     "data": {"class_path": "reaf_lightning.data.DigitsDataModule",
              "init_args": {"batch_size": 64, "image_size": 16},
              "num_classes": 10, "image_size": 16, "mean": [0.3, 0.3, 0.3],
              "std": [0.4, 0.4, 0.4], "classes": ["0", "1", ..., "9"]},
     "recipe": {"lr": 0.1, "schedule": "cosine", "accumulate_grad_batches": 1, ...},
     "epochs": {"planned": 4, "reached": 4}, "precision": "32-true",
     "provenance": {"package_version": "0.1.0", "git_commit": "...", "git_dirty": false,
                    "command": "reaf-lightning fit --config ..."},
     "params_m": 0.17, "gmacs": 0.012,
     "fit": {"epoch": 3, "final": {"val/acc1": 0.96, ...}, "best": {"val/acc1": 0.97, ...}},
     "validate": {"final": {...}}, "test": {"final": {"test/err1": ...}}}

The data module is recorded by the class path of its class and the init
settings it saved; readers must only ever import the package's own data modules
(or a class the user names), never a class named in a file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from reaf_lightning.errors import ConfigError, one_line
from reaf_lightning.io import atomic_outputs, read_bounded

__all__ = [
    "FORMAT",
    "INPUT_KEYS",
    "MAX_DEPTH",
    "MAX_IMAGE_SIZE",
    "MAX_RECORD_BYTES",
    "DataSpec",
    "EpochCount",
    "NetworkSpec",
    "Provenance",
    "RecordError",
    "RunRecord",
    "StageMetrics",
    "read_record",
    "read_record_file",
    "record_from_dict",
    "write_record",
]

#: Schema name and version, written into every record.
FORMAT = "reaf-run/1"
#: A record is a few kilobytes; anything over this is not one (and is never read into memory).
MAX_RECORD_BYTES = 1 << 20
#: Deepest nesting of lists/objects accepted (a record needs about 5).
MAX_DEPTH = 32
#: The largest image side a record may give (ours: the paper's largest input is 480 px, and
#: a reader would allocate images at that side before anything could fail).
MAX_IMAGE_SIZE = 4096
#: What a record says its network was fed: the settings a reader may take from a file.
INPUT_KEYS = ("image_size", "resize_size", "mean", "std", "num_classes")

Metric = float | None  # None: the value was not finite (NaN/inf), or not logged


class RecordError(ConfigError):
    """A run record that cannot be read or does not follow the schema (exit status 2)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, ser_json_inf_nan="null")


class NetworkSpec(_Strict):
    """The network: registry name, keyword arguments and classes (rebuilds it)."""

    arch: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    num_classes: int


class DataSpec(_Strict):
    """The data module: its class path, the init settings it saved, and what the network was
    fed: classes (their number and names, in label order), image size and normalisation, as
    the set-up module had them (a mean and std computed from the training images are
    recorded too). ``None`` where the module does not say, or in a record written before
    they were recorded. A reader takes only these and the class name from a file, never a
    path, download, cache or worker setting (:mod:`reaf_lightning.analysis.run_data`)."""

    class_path: str
    init_args: dict[str, Any] = Field(default_factory=dict)
    num_classes: int | None = None
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    classes: list[str] | None = None

    @field_validator("num_classes", "image_size", "mean", "std", mode="after")
    @classmethod
    def _fed(cls, value: Any, info: ValidationInfo) -> Any:
        problem = _input_problem(info.field_name, value)
        if problem:
            raise ValueError(problem)
        return value

    def inputs(self, source: str) -> dict[str, Any]:
        """What the network was fed, as far as the record says (:data:`INPUT_KEYS`): the fed
        values, else (a record written before they were recorded) the init settings that
        gave them.

        Raises:
            RecordError: a value out of range (one line naming ``source``).
        """
        args = self.init_args
        values = {
            "image_size": self.image_size
            if self.image_size is not None
            else args.get("image_size"),
            "resize_size": args.get("resize_size"),
            "mean": self.mean if self.mean is not None else args.get("mean"),
            "std": self.std if self.std is not None else args.get("std"),
            "num_classes": self.num_classes,
        }
        out = {k: v for k, v in values.items() if v is not None}
        for key, value in out.items():
            problem = _input_problem(key, value)
            if problem:
                raise RecordError(f"{source}: data {key}: {problem}")
        return out


def _input_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the fed ``key`` (``None``: it can, or it is ``None``)."""
    if value is None:
        return None
    if key in ("image_size", "resize_size"):
        top = MAX_IMAGE_SIZE
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            return f"an image side is an integer in [1, {top}], got {value!r}"
    elif key == "num_classes":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"must be a positive integer, got {value!r}"
    elif key in ("mean", "std"):
        numbers = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
        if not numbers or len(value) != 3:
            return f"must be 3 finite numbers (one per RGB channel), got {value!r}"
        if key == "std" and min(value) <= 0:
            return f"must be > 0, got {value!r}"
    return None


class EpochCount(_Strict):
    """Epochs asked for (``trainer.max_epochs``; ``None`` when only steps bound it) and trained."""

    planned: int | None = None
    reached: int = 0


class Provenance(_Strict):
    """What produced the run (see :func:`reaf_lightning.runs.provenance.provenance`)."""

    package_version: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    command: str | None = None


class StageMetrics(_Strict):
    """The metrics of one stage: ``final`` as last logged (in ``epoch``), ``best`` over a
    fit's validation epochs (each metric on its own: max for accuracies, min otherwise)."""

    epoch: int | None = None
    final: dict[str, Metric] = Field(default_factory=dict)
    best: dict[str, Metric] = Field(default_factory=dict)

    @field_validator("final", "best", mode="after")
    @classmethod
    def _finite_or_none(cls, value: dict[str, Metric]) -> dict[str, Metric]:
        return {k: (v if v is None or math.isfinite(v) else None) for k, v in value.items()}


class RunRecord(_Strict):
    """The schema of ``metrics.json`` and of the ``reaf_run`` entry of every checkpoint.

    ``finished`` is true once ``fit`` reached its planned end (``epochs.reached ==
    epochs.planned``, or the trainer's own stop, e.g. ``max_steps``); a record
    written by a preempted or interrupted fit has it false. ``recipe`` holds the
    training settings that change the result: the module's optimizer, schedule
    and loss settings plus the trainer's ``accumulate_grad_batches``, world size
    and global batch.
    """

    format: Literal["reaf-run/1"] = FORMAT
    seed: int | None = None
    finished: bool = False
    network: NetworkSpec | None = None
    data: DataSpec | None = None
    recipe: dict[str, Any] = Field(default_factory=dict)
    epochs: EpochCount = Field(default_factory=EpochCount)
    precision: str | None = None
    provenance: Provenance = Field(default_factory=Provenance)
    params_m: float | None = None
    gmacs: float | None = None
    fit: StageMetrics | None = None
    validate_: StageMetrics | None = Field(default=None, alias="validate")
    test: StageMetrics | None = None

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, ser_json_inf_nan="null", populate_by_name=True
    )

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON types only (also what a ``weights_only`` checkpoint can hold)."""
        return self.model_dump(mode="json", by_alias=True)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of lists/dicts, counted without recursion, stopping past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def record_from_dict(content: Any, source: str) -> RunRecord:
    """Validate an already-loaded record (e.g. a checkpoint's ``reaf_run``).

    Raises:
        RecordError: not an object, too deeply nested, or off the schema (one line naming
            ``source``).
    """
    if not isinstance(content, dict):
        raise RecordError(f"{source}: a run record must be a JSON object, not {_kind(content)}")
    if _depth(content, MAX_DEPTH) > MAX_DEPTH:
        raise RecordError(f"{source}: nested deeper than {MAX_DEPTH} levels; not a run record")
    try:
        return RunRecord.model_validate(content)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise RecordError(
            f"{source}: not a {FORMAT} run record: {where}: {first['msg']}{more}"
        ) from None


def read_record_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object of a record file, read as untrusted input (no schema check yet).

    Read by :func:`reaf_lightning.io.read_bounded` (a regular file of at most
    :data:`MAX_RECORD_BYTES`, checked on the open descriptor, so a link to
    ``/dev/zero`` or a FIFO can neither hang nor fill memory), then decoded as
    strict UTF-8 JSON with the nesting bounded.

    Raises:
        RecordError: one line naming the file and what is wrong with it.
    """
    file = Path(path)
    raw = read_bounded(file, MAX_RECORD_BYTES, what="run record", error=RecordError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecordError(f"run record {file} is not UTF-8 text (byte {err.start})") from None
    try:
        content = json.loads(text)
    except RecursionError:
        raise RecordError(f"{file}: nested deeper than {MAX_DEPTH} levels; not a record") from None
    except ValueError as err:
        raise RecordError(f"run record {file} is not valid JSON: {one_line(err)}") from None
    if isinstance(content, (dict, list)) and _depth(content, MAX_DEPTH) > MAX_DEPTH:
        raise RecordError(f"{file}: nested deeper than {MAX_DEPTH} levels; not a run record")
    if not isinstance(content, dict):
        raise RecordError(f"{file}: a run record must be a JSON object, not {_kind(content)}")
    return content


def read_record(path: str | os.PathLike[str]) -> RunRecord:
    """Read and validate the run record at ``path`` (a ``metrics.json``).

    Raises:
        RecordError: unreadable, not a regular file, over :data:`MAX_RECORD_BYTES`,
            not UTF-8 JSON, nested deeper than :data:`MAX_DEPTH`, or off the schema.
    """
    return record_from_dict(read_record_file(path), str(path))


def write_record(path: str | os.PathLike[str], record: RunRecord) -> None:
    """Write ``record`` to ``path`` atomically (complete or not at all)."""
    with atomic_outputs([path]) as (temp,):
        temp.write_text(json.dumps(record.to_json_dict(), indent=1) + "\n", encoding="utf-8")


def _kind(value: Any) -> str:
    names = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else "a value")
