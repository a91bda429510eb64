"""Configs found by name: ``--config quickstart`` reads the packaged ``quickstart.yaml``.

The experiment configs ship inside the package (``reaf_lightning.configs``, the
repository's ``configs/`` folder), so a wheel installed anywhere runs the quick
start and every paper row without a checkout::

    reaf-lightning fit --config quickstart
    reaf-lightning fit --config recipes/imagenet --config table5/reaf_resnet50_c72_4-3-4
    reaf-analysis --config figure2 --data.init_args.root /data/imagenet

A ``--config``/``-c`` value that is an existing file is used as it is (a file
always wins over a name). Otherwise it is a name: the config's path below the
folder, with or without ``.yaml`` and with or without a leading ``configs/`` (so
the repository's own commands, e.g. those in the sweep files, work from a wheel
too). An unknown name is one line naming close names. Values that hold YAML
text (jsonargparse accepts ``--config '{trainer: {max_epochs: 1}}'``) are left
alone. Only files below the packaged folder can be named: a name never reaches
outside it.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from reaf_lightning.errors import ConfigError

__all__ = ["config_dir", "config_names", "find_config", "resolve_config_names"]

_FLAGS = ("--config", "-c")
_PREFIX = "configs/"
_SUFFIXES = (".yaml", ".yml")
_YAML_TEXT = set(":{}[]\n ")  # a name or path never holds these; YAML text does


def config_dir() -> Path:
    """The folder of the packaged configs (``reaf_lightning.configs``).

    An editable install made before the configs were packaged has no
    ``reaf_lightning.configs``; there the repository's ``configs/`` folder next
    to the package is the same files.
    """
    try:
        return Path(str(importlib.resources.files("reaf_lightning.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


def config_names() -> list[str]:
    """Every packaged config's name (its path below :func:`config_dir`, no ``.yaml``), sorted."""
    root = config_dir()
    return sorted(
        path.relative_to(root).with_suffix("").as_posix() for path in root.rglob("*.yaml")
    )


def _candidates(value: str, groups: Sequence[str]) -> list[str]:
    name = value.removeprefix("./").removeprefix(_PREFIX)
    for suffix in _SUFFIXES:
        name = name.removesuffix(suffix)
    return [name, *(f"{group}/{name}" for group in groups)]


def find_config(value: str, groups: Sequence[str] = ()) -> str:
    """The file ``--config value`` reads: ``value`` itself if it is a file, else the packaged
    config it names (tried as given, then below each of ``groups``, e.g. ``("analysis",)``).

    Raises:
        ConfigError: neither a file nor a packaged config's name; names the close ones.
    """
    if os.path.lexists(value) or _YAML_TEXT & set(value):
        return value
    names = config_names()
    known = set(names)
    for candidate in _candidates(value, groups):
        if candidate in known:
            return str(config_dir() / f"{candidate}.yaml")
    wanted = _candidates(value, groups)
    close = [n for c in wanted for n in difflib.get_close_matches(c, names, n=5, cutoff=0.6)]
    close += [n for n in names if n.rpartition("/")[2] == wanted[0].rpartition("/")[2]]
    groups_listed = sorted({n.partition("/")[0] for n in names if "/" in n})
    hint = (
        f"close names: {', '.join(list(dict.fromkeys(close))[:3])}"
        if close
        else f"names are e.g. quickstart or <group>/<file> with group one of "
        f"{', '.join(groups_listed)} (see {config_dir()})"
    )
    raise ConfigError(
        f"--config {value!r} does not exist: no such file, and no packaged config of that "
        f"name; {hint}"
    )


def resolve_config_names(
    args: Sequence[str] | None, groups: Sequence[str] = ()
) -> Sequence[str] | None:
    """Command-line arguments with every ``--config``/``-c`` name replaced by its file.

    Args:
        args: the arguments after the program name; ``None`` means the command line,
            which is then rewritten in place (``sys.argv``), as if the user had typed
            the paths: Lightning's CLI reads it as usual, and the processes a DDP
            launcher starts with the same command line get the same files.
        groups: folders tried after the name as given (``reaf-analysis`` passes
            ``("analysis",)`` so that ``--config figure2`` works).

    Returns:
        ``None`` for ``args=None``; ``args`` itself when nothing was a name; else a new
        list. Arguments that are not a list (a dict of settings) pass unchanged.
    """
    argv = sys.argv[1:] if args is None else args
    if not isinstance(argv, (list, tuple)):
        return args
    out = [str(arg) for arg in argv]
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + find_config(arg.split("=", 1)[1], groups)
        elif i > 0 and out[i - 1] in _FLAGS and not arg.startswith("-"):
            out[i] = find_config(arg, groups)
    if out == [str(arg) for arg in argv]:
        return args
    if args is None:
        sys.argv[1:] = out
        return None
    return out
