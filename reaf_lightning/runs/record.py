"""The run record: what a run is and what it reached, in ``metrics.json`` and in its checkpoints.

Not part of the paper. A reproduction compares many runs (several seeds per
row of the paper's tables, whose gaps are 0.2-0.5 points of top-1 error), so
each run says what it is instead of leaving readers to guess from folder names:
the network and its arguments, the data module and its settings, the recipe,
epochs planned and reached, the seed, whether it finished (and if not, what is
missing), the precision that actually ran and what produced it (package version
and commit), beside the metrics, and the files the run wrote (the only files any
clean-up of the run may delete, :mod:`reaf_lightning.runs.owned`).
:class:`RunRecord` is its schema (pydantic), with bounds on every number (no
negative epochs, no 309-digit GMACs); :func:`write_record` writes it atomically
and :func:`read_record` reads one back as untrusted input: bounded in size and
depth, regular files only, a key given twice refused, every failure one line
naming the file (:class:`RecordError`, exit status 2).

An example (``fit.final`` and ``fit.best`` as logged, fractions in [0, 1], a
metric that was not finite is ``null``; ``fit.epoch`` is the last validated epoch;
``seen`` is what the last pass over each split fed the network)::

    {"format": "reaf-run/1", "seed": 0, "finished": true, "missing": null,
     "network": {"arch": "reaf_resnet18", "kwargs": {"reaf": "4-3-4"}, "num_classes": 10},
     "data": {"class_path": "reaf_lightning.data.DigitsDataModule",
              "init_args": {"batch_size": 64, "image_size": 16},
              "dataset": "digits", "num_classes": 10, "image_size": 16,
              "augmentation": "none", "sizes": {"train": 1437, "val": 360, "test": 360},
              "mean": [0.3, 0.3, 0.3], "std": [0.4, 0.4, 0.4], "classes": ["0", ..., "9"]},
     "recipe": {"lr": 0.1, "schedule": "cosine", "accumulate_grad_batches": 1, ...},
     "epochs": {"planned": 4, "reached": 4}, "precision": "32-true",
     "provenance": {"package_version": "0.1.0", "git_commit": "...", "git_dirty": false,
                    "command": "reaf-lightning fit --config ..."},
     "params_m": 0.17, "gmacs": 0.012,
     "fit": {"epoch": 3, "final": {"val/acc1": 0.96, ...}, "best": {"val/acc1": 0.97, ...},
             "seen": {"train": {"limit": 1.0, "batches": 23, "images": 1437, "classes": 10},
                      "val": {"limit": 2, "batches": 2, "images": 128, "classes": 10}}},
     "validate": {"final": {...}}, "test": {"final": {"test/err1": ...}},
     "files": ["config.yaml", "checkpoints/last.ckpt", "checkpoints/best-epoch=003.ckpt",
               "wandb"]}

The data module is recorded by the class path of its class and the init
settings it saved; readers must only ever import the package's own data modules
(or a class the user names), never a class named in a file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from reaf_lightning.errors import ConfigError, one_line
from reaf_lightning.io import SEED_RANGE, atomic_outputs, read_text

__all__ = [
    "FORMAT",
    "INPUT_KEYS",
    "MAX_DEPTH",
    "MAX_EPOCHS",
    "MAX_FILES",
    "MAX_IMAGE_SIZE",
    "MAX_RECORD_BYTES",
    "DataSpec",
    "EpochCount",
    "NetworkSpec",
    "Provenance",
    "RecordError",
    "RunRecord",
    "SplitSeen",
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

#: Most epochs a record may name (the paper trains 100-200; ours, against impossible values).
MAX_EPOCHS = 1_000_000
#: Most files a record may list (a run writes a handful; ``save_top_k: -1`` one per epoch).
MAX_FILES = 100_000
#: Bound of ``params_m`` (millions) and ``gmacs`` (billions): 10^12 parameters or MACs, ours,
#: three orders of magnitude above any network of the paper's kind.
MAX_COMPLEXITY = 1e6

Metric = float | None  # None: the value was not finite (NaN/inf), or not logged
Epochs = Annotated[int, Field(ge=0, le=MAX_EPOCHS)]
Complexity = Annotated[float, Field(ge=0, le=MAX_COMPLEXITY, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=SEED_RANGE[0], le=SEED_RANGE[1])]


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
    """The data module: its class path, the init settings it saved, the data set it fed (as
    the module describes it: name, training augmentation in words, images per split) and
    what the network was fed: classes (their number and names, in label order), image size
    and normalisation, as the set-up module had them (a mean and std computed from the
    training images are recorded too). ``None`` where the module does not say, or in a
    record written before they were recorded. A reader takes only these and the class name
    from a file, never a path, download, cache or worker setting
    (:mod:`reaf_lightning.analysis.run_data`)."""

    class_path: str
    init_args: dict[str, Any] = Field(default_factory=dict)
    dataset: str | None = None
    num_classes: int | None = None
    image_size: int | None = None
    augmentation: str | None = None
    sizes: dict[str, int] = Field(default_factory=dict)
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

    planned: Epochs | None = None
    reached: Epochs = 0


class Provenance(_Strict):
    """What produced the run (see :func:`reaf_lightning.runs.provenance.provenance`)."""

    package_version: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    command: str | None = None


class SplitSeen(_Strict):
    """What one pass over a split fed the network, all processes together.

    ``limit`` is the trainer's ``limit_<split>_batches`` (``1.0``: all), ``batches``
    the batches of one process, ``images`` the images of all processes (under DDP
    including the few a ``DistributedSampler`` repeats to even out the ranks),
    ``classes`` how many distinct labels they held (``None``: not counted).
    """

    limit: int | float | None = None
    batches: int = 0
    images: int = 0
    classes: int | None = None


class StageMetrics(_Strict):
    """The metrics of one stage: ``final`` as last logged (in ``epoch``), ``best`` over a
    fit's validation epochs (each metric on its own: max for accuracies, min otherwise),
    and ``seen``, what the last pass over each split (``train``, ``val``, ``test``) fed.

    A value that is not finite becomes ``None``; an accuracy or error (``.../acc*``,
    ``.../err*``) must be a fraction in [0, 1].
    """

    epoch: Epochs | None = None
    final: dict[str, Metric] = Field(default_factory=dict)
    best: dict[str, Metric] = Field(default_factory=dict)
    seen: dict[str, SplitSeen] = Field(default_factory=dict)

    @field_validator("final", "best", mode="after")
    @classmethod
    def _finite_or_none(cls, value: dict[str, Metric]) -> dict[str, Metric]:
        out = {k: (v if v is None or math.isfinite(v) else None) for k, v in value.items()}
        for name, number in out.items():
            fraction = name.rsplit("/", 1)[-1].startswith(("acc", "err"))
            if fraction and number is not None and not 0.0 <= number <= 1.0:
                raise ValueError(f"{_short(name)} = {number:.6g} is not a fraction in [0, 1]")
        return out


def _listed_path(entry: str) -> str:
    """A path as :mod:`~reaf_lightning.runs.owned` lists it: relative to the run directory,
    or absolute (a checkpoint directory elsewhere); never ``.``, ``..``, an empty part or NUL."""
    parts = entry.split("/")
    body = parts[1:] if entry.startswith("/") else parts
    if len(entry) > 4096 or "\0" in entry or any(p in ("", ".", "..") for p in body):
        raise ValueError(f"{_short(entry)!r} is not a plain path (no '.', '..', '//' or NUL)")
    return entry


class RunRecord(_Strict):
    """The schema of ``metrics.json`` and of the ``reaf_run`` entry of every checkpoint.

    ``finished`` is true only when ``fit`` reached its planned end (``epochs.reached
    == epochs.planned``, or the trainer's own stop, e.g. ``max_steps``) *and* the
    weights it ends with were validated (``fit.final`` is their validation), or the
    fit has no validation at all. Otherwise it is false and ``missing`` says what
    is missing in one line (epochs not trained, the validation of the final
    weights). ``recipe`` holds the training settings that change the result: the
    module's optimizer, schedule and loss settings plus the trainer's
    ``accumulate_grad_batches``, world size and global batch. ``files`` lists what
    the run wrote (:mod:`reaf_lightning.runs.owned`): paths relative to the run
    directory, absolute for checkpoints in a checkpoint directory elsewhere.
    """

    format: Literal["reaf-run/1"] = FORMAT
    seed: Seed | None = None
    finished: bool = False
    missing: Annotated[str, Field(max_length=1000)] | None = None
    network: NetworkSpec | None = None
    data: DataSpec | None = None
    recipe: dict[str, Any] = Field(default_factory=dict)
    epochs: EpochCount = Field(default_factory=EpochCount)
    precision: str | None = None
    provenance: Provenance = Field(default_factory=Provenance)
    params_m: Complexity | None = None
    gmacs: Complexity | None = None
    fit: StageMetrics | None = None
    validate_: StageMetrics | None = Field(default=None, alias="validate")
    test: StageMetrics | None = None
    files: Annotated[list[str], Field(max_length=MAX_FILES)] = Field(default_factory=list)

    @field_validator("files", mode="after")
    @classmethod
    def _plain_paths(cls, value: list[str]) -> list[str]:
        return [_listed_path(entry) for entry in value]

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
        where = _short(".".join(str(p) for p in first["loc"])) or "(top level)"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise RecordError(
            one_line(f"{source}: not a {FORMAT} run record: {where}: {first['msg']}{more}")
        ) from None


def read_record_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object of a record file, read as untrusted input (no schema check yet).

    Read by :func:`reaf_lightning.io.read_text` (a regular file of at most
    :data:`MAX_RECORD_BYTES`, checked on the open descriptor, so a link to
    ``/dev/zero`` or a FIFO can neither hang nor fill memory), then decoded as
    strict UTF-8 JSON with the nesting bounded.

    Raises:
        RecordError: one line naming the file and what is wrong with it.
    """
    file = Path(path)
    text = read_text(file, MAX_RECORD_BYTES, what="run record", error=RecordError)
    try:
        content = json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise RecordError(f"{file}: nested deeper than {MAX_DEPTH} levels; not a record") from None
    except _DuplicateKey as err:
        raise RecordError(
            f"run record {file}: key {err.args[0]} is given twice in one object; a record "
            "gives each key once"
        ) from None
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


class _DuplicateKey(ValueError):
    """A JSON object gives one key twice (``json`` keeps the last one silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    content = dict(pairs)
    if len(content) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _DuplicateKey(repr(_short(twice)))
    return content


def _short(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters, for one-line messages about untrusted values."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    names = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else "a value")
