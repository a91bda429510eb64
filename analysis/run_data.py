"""The data a run was trained on, rebuilt for ``reaf-analysis``: a file supplies names only.

A checkpoint says which data module the run used and what its network was fed: its run
record (``reaf_run``, :class:`reaf_lightning.runs.record.DataSpec`), the only source read;
a plain ``state_dict`` file has none. From it only what changes what the network sees
is reused:

* the data module's *name*, matched against :data:`DATA_MODULES`, the package's own data
  modules (:func:`reaf_lightning.io.import_class`); a class named in a file is never
  imported, any other class must be named by the user (``--data.class_path``);
* :data:`INPUT_SETTINGS`, how each image looks to the network (image size, evaluation
  resize, normalisation mean and std; the values the network was fed, a mean and std
  computed from the training images included:
  :meth:`~reaf_lightning.runs.record.DataSpec.inputs`), for whichever class evaluates;
* :data:`SPLIT_SETTINGS`, which images form the validation split (so that the analysis
  does not evaluate on training images), for the run's own class only.

Every path, download, cache, worker and loader setting comes from the user or from the
class's defaults: a file cannot make the command read, write, replace or fetch anything
(ours, after a checkpoint's ``verify_cache`` replaced the file it named and its
``download: true`` started a download outside the output directory). Where the run's
data lived is printed, not used.

The command line wins: every data setting given there is used, with a note where it
differs from the run's. After set-up, :func:`fed_differences` compares what the network
is fed now with what it was trained on, so that every difference is printed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from reaf_lightning.errors import ConfigError, ReafError, one_line
from reaf_lightning.io import import_class

if TYPE_CHECKING:
    from reaf_lightning.runs.record import DataSpec

__all__ = [
    "DATA_MODULES",
    "INPUT_SETTINGS",
    "SPLIT_SETTINGS",
    "build_data_module",
    "differs",
    "fed_differences",
]

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
#: How each image looks to the network; reused from the run for any class that takes them.
INPUT_SETTINGS = ("image_size", "resize_size", "mean", "std")
#: Which images form the validation split; reused for the run's own class only.
SPLIT_SETTINGS = ("val_fraction", "val_split", "seed")


def differs(a: Any, b: Any) -> bool:
    """Two settings differ as YAML would write them (a tuple equals the same list; floats
    within a relative 1e-6, so a recomputed float32 statistic equals its recorded value)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(differs(x, y) for x, y in zip(a, b))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
        return not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    return a != b


def build_data_module(
    given_class: str | None,
    given: Mapping[str, Any],
    recorded: DataSpec | None,
    source: str,
    note: Callable[[str], None] = print,
) -> Any:
    """The data module to evaluate on: the user's choice, completed by the run's names.

    Args:
        given_class: ``--data.class_path`` (``None``: the run's class).
        given: the init arguments given on the command line or in ``--config``.
        recorded: the data module the run recorded (``None``: none recorded).
        source: the file that recorded it (for messages).
        note: prints one note per setting where the command line and the run differ, and
            where the run's data lived.

    Raises:
        ConfigError: no class known, a recorded class that is not the package's, or
            settings the class refuses.
        RecordError: a recorded value out of range.
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
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    fed = recorded.inputs(source) if recorded is not None else {}
    reused = {k: v for k, v in fed.items() if k in INPUT_SETTINGS}
    if same and recorded is not None:
        reused.update({k: recorded.init_args[k] for k in SPLIT_SETTINGS if k in recorded.init_args})
    kwargs = {}
    for key in sorted(accepted & set(reused)):
        if key not in given:
            kwargs[key] = reused[key]
        elif differs(given[key], reused[key]):
            note(f"data {key}={given[key]!r} from the command line; the run used {reused[key]!r}")
    kwargs.update({k: v for k, v in given.items() if k in accepted})
    try:
        module = cls(**kwargs)
    except ReafError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"data module {cls.__name__}: {one_line(err)}") from err
    where = recorded.init_args.get("root") if recorded is not None else None
    used = getattr(module, "root", None)
    if where is not None and used is not None and str(where) != str(used):
        note(
            f"the run read its data from {where!r}; this analysis reads {str(used)!r} (a path "
            "is never taken from a file: give --data.init_args.root)"
        )
    return module


def fed_differences(module: Any, trained: Mapping[str, Any]) -> list[str]:
    """``"key: trained T, evaluated E"`` for every input the set-up ``module`` feeds otherwise
    than the run's network was trained with (``trained``: the record's
    :meth:`~reaf_lightning.runs.record.DataSpec.inputs`)."""
    out = []
    for key in (*INPUT_SETTINGS, "num_classes"):
        now = getattr(module, key, None)
        if key in trained and now is not None and differs(trained[key], now):
            out.append(f"{key}: trained {_plain(trained[key])}, evaluated {_plain(now)}")
    return out


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_plain(v) for v in value) + ")"
    return f"{value:.4g}" if isinstance(value, float) else repr(value)
