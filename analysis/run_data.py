"""The data a run was trained on, rebuilt for ``reaf-analysis`` without trusting the run's files.

A checkpoint says which data module the run used and with which settings: its run
record (``reaf_run``, :class:`reaf_lightning.runs.record.RunRecord`), the only source
read; a plain ``state_dict`` file has none. A class named in a file is never
imported: it is matched against :data:`DATA_MODULES`, the package's own data modules
(:func:`reaf_lightning.io.import_class`). Any other class must be named by the user
(``--data.class_path``), which is then imported as the user asked.

The command line wins: every data setting given there is used; where it differs
from the run's, a note says so (the data root, batch size, workers and image
size are the usual ones). When the user names another class than the run's,
only the settings that change what the network sees (image size, resize, mean,
std) are carried over from the run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from reaf_lightning.errors import ConfigError, ReafError, one_line
from reaf_lightning.io import import_class

if TYPE_CHECKING:
    from reaf_lightning.runs.record import DataSpec

__all__ = ["DATA_MODULES", "INPUT_SETTINGS", "build_data_module", "differs"]

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


def differs(a: Any, b: Any) -> bool:
    """Two settings differ as YAML would write them (a tuple equals the same list)."""
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return norm(a) != norm(b)


def build_data_module(
    given_class: str | None,
    given: Mapping[str, Any],
    defaults: Mapping[str, Any],
    recorded: DataSpec | None,
    source: str,
    note: Callable[[str], None] = print,
) -> Any:
    """The data module to evaluate on: the user's choice, completed by the run's record.

    Args:
        given_class: ``--data.class_path`` (``None``: the run's class).
        given: the init arguments given on the command line or in ``--config``.
        defaults: the init arguments of the parsed ``--data`` (defaults included).
        recorded: the data module the run recorded (``None``: none recorded).
        source: the file that recorded it (for messages).
        note: prints one note per setting where the command line and the run differ.

    Raises:
        ConfigError: no class known, a recorded class that is not the package's, or
            settings the class refuses.
    """
    if given_class is None:
        if recorded is None:
            raise ConfigError(
                "give --data.class_path: model_a's run does not record its data module "
                "(not a reaf-lightning checkpoint, or not a checkpoint)"
            )
        cls = import_class(
            recorded.class_path, "data module", DATA_MODULES, source, "--data.class_path"
        )
        same = True
    else:
        cls = import_class(given_class, "data module")
        same = recorded is not None and (
            given_class.rsplit(".", 1)[-1] == recorded.class_path.rsplit(".", 1)[-1]
        )
    settings = recorded.init_args if recorded is not None else {}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    carried = accepted if same else accepted & set(INPUT_SETTINGS)
    kwargs = {k: v for k, v in defaults.items() if k in accepted} if given_class else {}
    for key in sorted(carried & set(settings)):
        stored = settings[key]
        if key in given:
            if differs(given[key], stored):
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
