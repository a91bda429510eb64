"""The data a run was trained on, rebuilt for ``reaf-analysis`` without trusting the run's files.

A checkpoint or run directory says which data module the run used and with which
settings (its run record; for runs written before the record, the run directory's
``config.yaml`` and the checkpoint's ``datamodule_hyper_parameters``). A class named
in a file is never imported: it is looked up in :data:`DATA_MODULES`, the
package's own data modules. Any other class must be named by the user
(``--data.class_path``), which is then imported as the user asked.

The command line wins: every data setting given there is used; where it differs
from the run's, a note says so (the data root, batch size, workers and image
size are the usual ones). When the user names another class than the run's,
only the settings that change what the network sees (image size, resize, mean,
std) are carried over from the run.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reaf_lightning.errors import ConfigError, ReafError, one_line

__all__ = ["DATA_MODULES", "INPUT_SETTINGS", "RecordedData", "build_data_module", "recorded_data"]

#: The package's data modules, the only classes a recorded class path may name (spelled out,
#: not imported, so that ``--help`` stays light; a test checks it against ``reaf_lightning.data``).
DATA_MODULES: dict[str, str] = {
    name: f"reaf_lightning.data.{name}"
    for name in (
        "CIFAR10DataModule",
        "CIFAR100DataModule",
        "DigitsDataModule",
        "ImageFolderDataModule",
        "ImageNetDataModule",
    )
}
#: Settings that change what the network sees; kept from the run even for another class.
INPUT_SETTINGS = ("image_size", "resize_size", "mean", "std")


@dataclass
class RecordedData:
    """What a run says about its data: the class path (a string, never imported) and settings.

    Attributes:
        class_path: as recorded, or ``None`` when the run does not say.
        settings: the data module's init arguments as recorded.
        source: where they were read (for messages).
    """

    class_path: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = "the checkpoint"


def _allowed(class_path: str) -> str | None:
    """The package's name of ``class_path``, or ``None`` when it is not one of its modules."""
    name = class_path.rsplit(".", 1)[-1]
    if name not in DATA_MODULES:
        return None
    module = class_path.rpartition(".")[0]
    if module == "reaf_lightning.data" or module.startswith("reaf_lightning.data."):
        return name
    return None


def recorded_data(checkpoint: Path, content: Mapping[str, Any]) -> RecordedData:
    """The data module and settings a checkpoint's run recorded.

    Looked for, in order: the run record stored in the checkpoint (``reaf_run``,
    validated by :class:`reaf_lightning.runs.record.RunRecord`), the run directory's
    ``metrics.json`` record, its ``config.yaml`` (``data.class_path`` and
    ``init_args``, read strictly and bounded), then the class LightningCLI notes
    in ``datamodule_hyper_parameters`` (``_class_path``). The checkpoint's
    ``datamodule_hyper_parameters`` fill settings the source does not give.
    A record that fails validation is named in the error.

    Raises:
        ConfigError: a stored or recorded run record off the schema.
    """
    from reaf_lightning.io import read_yaml
    from reaf_lightning.runs.layout import CHECKPOINTS, RunDir
    from reaf_lightning.runs.record import read_record, record_from_dict

    settings = content.get("datamodule_hyper_parameters")
    settings = dict(settings) if isinstance(settings, Mapping) else {}
    hinted = settings.pop("_class_path", None)  # LightningCLI's own note of the class
    settings = {k: v for k, v in settings.items() if not str(k).startswith("_")}
    run = RunDir(checkpoint.parent.parent) if checkpoint.parent.name == CHECKPOINTS else None
    record = None
    if content.get("reaf_run") is not None:
        record = record_from_dict(content["reaf_run"], f"{checkpoint} (reaf_run)")
        source = str(checkpoint)
    elif run is not None and run.metrics.is_file():
        try:
            record, source = read_record(run.metrics), str(run.metrics)
        except ConfigError:
            record = None  # a file from before run records: the config.yaml below says more
    if record is not None and record.data is not None:
        return RecordedData(record.data.class_path, {**settings, **record.data.init_args}, source)
    config = run.config() if run is not None else None
    if config is not None and config.is_file():
        try:
            data = read_yaml(config).get("data")
        except ConfigError:
            data = None
        if isinstance(data, Mapping) and isinstance(data.get("class_path"), str):
            args = data.get("init_args")
            args = dict(args) if isinstance(args, Mapping) else {}
            return RecordedData(data["class_path"], {**args, **settings}, str(config))
    return RecordedData(hinted if isinstance(hinted, str) else None, settings)


def _import_named(class_path: str) -> type:
    """The class the user named on the command line."""
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"cannot import the data module {class_path!r}: {one_line(err)}") from err


def _differs(a: Any, b: Any) -> bool:
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return norm(a) != norm(b)


def build_data_module(
    given_class: str | None,
    given: Mapping[str, Any],
    defaults: Mapping[str, Any],
    recorded: RecordedData,
    note: Callable[[str], None] = print,
) -> Any:
    """The data module to evaluate on: the user's choice, completed by the run's record.

    Args:
        given_class: ``--data.class_path`` (``None``: the run's class).
        given: the init arguments given on the command line or in ``--config``.
        defaults: the init arguments of the parsed ``--data`` (defaults included).
        recorded: what the run recorded (:func:`recorded_data`).
        note: prints one note per setting where the command line and the run differ.

    Raises:
        ConfigError: no class known, a recorded class that is not the package's, or
            settings the class refuses.
    """
    recorded_name = _allowed(recorded.class_path) if recorded.class_path else None
    if given_class is None:
        if recorded.class_path is None:
            raise ConfigError(
                "give --data.class_path: model_a's run does not record its data module "
                "(not a reaf-lightning checkpoint, or not a checkpoint)"
            )
        if recorded_name is None:
            raise ConfigError(
                f"{recorded.source} names the data module {recorded.class_path!r}, which is not "
                f"one of this package's ({', '.join(DATA_MODULES)}); it is not imported: name "
                "the class yourself with --data.class_path"
            )
        cls = getattr(importlib.import_module("reaf_lightning.data"), recorded_name)
        same = True
    else:
        cls = _import_named(given_class)
        same = recorded_name is not None and given_class.rsplit(".", 1)[-1] == recorded_name
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    carried = accepted if same else accepted & set(INPUT_SETTINGS)
    kwargs = {k: v for k, v in defaults.items() if k in accepted} if given_class else {}
    for key in sorted(carried & set(recorded.settings)):
        stored = recorded.settings[key]
        if key in given:
            if _differs(given[key], stored):
                note(f"data {key}={given[key]!r} from the command line; the run used {stored!r}")
        else:
            kwargs[key] = stored
    kwargs.update({k: v for k, v in given.items() if k in accepted})
    try:
        return cls(**kwargs)
    except ReafError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"data module {cls.__name__}: {one_line(err)}") from err
