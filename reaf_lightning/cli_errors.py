"""How ``reaf-lightning`` reports failures: one line for the user's mistakes, tracebacks for bugs.

Not part of the paper (issue 6). The policy, also in README "Reliability":

* **User errors** end the command with ``reaf-lightning: error: <one line>``
  on stderr and exit status **2** (as argparse does for a bad flag):

  - every configuration parse error (unknown key in a YAML file or a flag,
    wrong type, YAML syntax, missing ``--config`` file), reworded by
    :func:`format_parse_error` to name the key, the value and what is valid;
  - :class:`~reaf_lightning.checkpointing.CheckpointError` and the data
    modules' ``DatasetNotFoundError`` / ``DatasetLayoutError`` /
    ``CorruptImageError``, wherever they are raised;
  - ``ValueError``, ``TypeError``, ``FileNotFoundError`` and Lightning's
    ``MisconfigurationException`` raised while the command *builds* the run
    (parsing, model/data/trainer construction, checkpoint checks): the
    constructors validate their arguments this way, e.g.
    ``REAF 4-3-5: G_O must be C(4, 3) = 4``;
  - once the run has started, ``ValueError`` / ``FileNotFoundError`` /
    ``MisconfigurationException`` only when raised by this package or by
    Lightning itself (deliberate checks such as "schedule='cosine' needs
    trainer.max_epochs"). The same types raised from inside PyTorch or any
    other library mid-run are treated as bugs.

* **Numerical faults** (:class:`~reaf_lightning.module.NonFiniteTrainingError`)
  print one line and exit with status **3**; the last good checkpoint is kept.
* **Preemption** (``SIGTERM``) saves ``last.ckpt`` and exits with **143**.
* **Everything else is a bug**: Python's traceback and status 1, unchanged.

``REAF_DEBUG=1`` (shared with ``reaf-analysis``) re-raises every error with its
full traceback, and shows jsonargparse's full usage text for parse errors.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "ConfigError",
    "EXIT_NONFINITE",
    "EXIT_PREEMPTED",
    "EXIT_USER_ERROR",
    "describe_error",
    "format_parse_error",
    "is_user_error",
    "one_line",
    "unwrap",
]

EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3
EXIT_PREEMPTED = 128 + 15  # what a shell reports for a process ended by SIGTERM


class ConfigError(ValueError):
    """The configuration (YAML files and flags) does not parse; the message is one line."""


#: Packages whose ValueError/FileNotFoundError are deliberate rejections of a setting.
_DELIBERATE = ("reaf_lightning", "analysis", "lightning", "lightning_fabric", "jsonargparse")


def one_line(text: str) -> str:
    """Collapse all whitespace (newlines included) to single spaces."""
    return " ".join(str(text).split())


def _raised_in(tb: TracebackType | None) -> str:
    """Top-level package of the module where an exception was raised (innermost frame)."""
    name = ""
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "") or ""
        tb = tb.tb_next
    return name.split(".")[0]


def unwrap(err: BaseException) -> BaseException:
    """The original exception behind jsonargparse's wrappers.

    jsonargparse re-raises a constructor's error as ``ValueError("Does not
    validate against any of the Union subtypes ...")`` chained to it; the
    original carries the message the user needs and decides bug vs. user error.
    """
    while err.__cause__ is not None and _raised_in(err.__traceback__) == "jsonargparse":
        err = err.__cause__
    return err


def is_user_error(err: BaseException, building: bool) -> bool:
    """Apply the policy of the module docstring to ``err``.

    Args:
        err: the exception that ended the command.
        building: it was raised before the Trainer method (fit/validate/...) started.
    """
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import (
        MisconfigurationException as Misconfiguration,
    )

    from reaf_lightning.checkpointing import CheckpointError
    from reaf_lightning.data.errors import (
        CorruptImageError,
        DatasetLayoutError,
        DatasetNotFoundError,
    )

    if isinstance(
        err,
        (
            ArgumentError,
            ConfigError,
            CheckpointError,
            DatasetNotFoundError,
            DatasetLayoutError,
            CorruptImageError,
        ),
    ):
        return True
    if building:
        return isinstance(err, (ValueError, TypeError, FileNotFoundError, Misconfiguration))
    if isinstance(err, (ValueError, FileNotFoundError, Misconfiguration)):
        return _raised_in(err.__traceback__) in _DELIBERATE
    return False


def describe_error(err: BaseException) -> str:
    """The user-facing line for ``err`` (its message, whitespace collapsed)."""
    text = one_line(str(err))
    if isinstance(err, FileNotFoundError) and err.filename and not text.count(str(err.filename)):
        text = f"{text}: {err.filename}"
    return text or type(err).__name__


# -- jsonargparse messages --------------------------------------------------------------------

_CLASS = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")


def _type_names(text: str) -> str:
    """``[<class 'int'>, <class 'NoneType'>]`` -> ``int or null``; Literals -> their values."""
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    parts = []
    depth, start = 0, 0
    for i, ch in enumerate(inner):  # split on top-level commas only
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    names = []
    for part in (p.strip() for p in parts):
        literal = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", part)
        if literal:
            names.append("one of " + literal.group(1))
            continue
        name = _CLASS.sub(r"\1", part).replace("typing.", "")
        names.append("null" if name == "NoneType" else name)
    return " or ".join(dict.fromkeys(names))


def _format_key_error(key: str, body: str) -> str:
    """One line for ``Parser key "<key>": <body>``."""
    problem = re.search(
        r"Problem with given class_path '([^']+)':\s*(.*?)(?:\n\s*- |\Z)", body, re.S
    )
    if problem:
        cls, inner = problem.group(1), problem.group(2)
        nested = re.match(r'\s*Parser key "([^"]+)":\s*(.*)', inner, re.S)
        if nested:
            return _format_key_error(f"{key}.init_args.{nested.group(1)}", nested.group(2))
        unknown = re.search(r"Option '([^']+)' is not accepted", inner)
        if unknown:
            valid = _init_args(cls)
            hint = _suggest(unknown.group(1), valid, f"{key}.init_args")
            return f"{key}.init_args.{unknown.group(1)} is not an argument of {cls}{hint}"
        return f"{key}: class_path {cls!r}: {one_line(inner)}"
    simple = re.match(r"\s*Expected a (.*?)\. Got value: (.*)", body, re.S)
    if simple:
        return f"{key}: got {simple.group(2).strip()!r}, expected {_type_names(simple.group(1))}"
    given = re.search(r"Given value: (.*)", body)
    subtypes = re.search(r"Subtypes: (\[.*?\])\n", body, re.S)
    if given and subtypes:
        return f"{key}: got {given.group(1).strip()!r}, expected {_type_names(subtypes.group(1))}"
    return f"{key}: {one_line(body)}"


def _init_args(class_path: str) -> list[str]:
    """Constructor arguments of ``class_path`` (for a hint), or [] when it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        params = inspect.signature(cls.__init__).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    return [
        p
        for p in params
        if p != "self"
        and params[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def _suggest(leaf: str, valid: Sequence[str], group: str, dashes: str = "") -> str:
    """``; did you mean ...? valid <group> keys: ...`` (empty when nothing is known)."""
    if not valid:
        return ""
    close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.6)
    hint = f"; did you mean {dashes}{group}.{close[0]}?" if close else ""
    if len(valid) <= 30:
        hint += f" (valid {group} keys: {', '.join(valid)})"
    else:
        hint += " (see --help for the valid keys)"
    return hint


def _unknown_key(key: str, keys: Sequence[str], dashes: str) -> str:
    """Hint for an unknown ``key``: the closest valid key and the keys of its group."""
    group, _, leaf = key.rpartition(".")
    if group and not any(k.startswith(group + ".") for k in keys):  # the group itself is wrong
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
        return f"; did you mean {dashes}{close[0]}?" if close else " (see --help for the keys)"
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == group]
    siblings = [s for s in siblings if s not in ("help", "init_args", "class_path")]
    if not group:
        return _suggest(leaf, siblings, "top-level", dashes).replace("top-level.", "")
    return _suggest(leaf, siblings, group, dashes)


def format_parse_error(message: str, keys: Iterable[str] = (), configs: Sequence[str] = ()) -> str:
    """Turn a jsonargparse error message into one line that names the key and what is valid.

    Args:
        message: ``str(ArgumentError)``.
        keys: every key of the parser (``model.lr``, ...) for "did you mean" hints.
        configs: the ``--config`` files given, to name the one with a YAML syntax error.
    """
    keys = list(keys)
    text = message.strip()
    unknown = re.match(r"Subcommand '\w+' does not accept options? (.*)", text)
    if unknown:
        names = re.findall(r"'([^']+)'", unknown.group(1))
        if names:
            return f"unknown option {names[0]!r}" + _unknown_key(names[0], keys, "")
    unrecognized = re.match(r"unrecognized arguments: (.*)", text, re.S)
    if unrecognized:
        flags = [a for a in unrecognized.group(1).split() if a.startswith("--")]
        if flags:
            key = flags[0][2:].split("=")[0]
            return f"unknown option --{key}" + _unknown_key(key, keys, "--")
    missing = re.match(r'Parser key "config": File does not exist: (.*)', text)
    if missing:
        return f"--config file not found: {missing.group(1).strip()}"
    key_error = re.match(r'Parser key "([^"]+)":\s*(.*)', text, re.S)
    if key_error and key_error.group(1) != "config":
        return _format_key_error(key_error.group(1), key_error.group(2))
    if text.startswith("Problems parsing config"):
        bad = _unparsable_yaml(configs)
        if bad:
            return f"{bad[0]} is not valid YAML: {bad[1]}"
    return one_line(text)


def _unparsable_yaml(configs: Sequence[str]) -> tuple[str, str] | None:
    """The first ``--config`` file whose YAML does not parse, with the parser's reason."""
    import yaml

    for path in configs:
        try:
            yaml.safe_load(Path(path).read_text())
        except OSError:
            continue
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(err, "problem", None) or one_line(str(err))
            return path, f"{problem}{where}"
    return None
