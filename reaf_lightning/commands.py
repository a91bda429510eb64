"""Command plumbing: how every command of the package reads its command line and runs.

``reaf-lightning``, ``reaf-analysis``, ``reaf-report``, ``reaf-zoo`` and the
``python -m`` commands are each a parser plus a function that does the work.
Their ``main(args=None)`` is one line, :func:`run_main`, which

* resolves the arguments once (:func:`command_line`): ``args`` when a test or a
  notebook passes them, else ``sys.argv[1:]``; nothing below reads ``sys.argv``
  again, so a test's own command line (pytest's) never leaks into a command;
* runs the work under the exit-status policy (:func:`run_command`; the statuses
  are listed in :mod:`reaf_lightning.errors`) and exits with its status.

The work prepares the command line once (:func:`prepare_arguments`: packaged
configs found by name, every file the line names checked before the parser opens
it), then parses it with :func:`parse`, the one place where a parse error becomes
a one-line :class:`~reaf_lightning.errors.ConfigError` in jsonargparse's own
words; ``--help`` prints and exits 0 as jsonargparse does.

Configs by name: the experiment configs ship inside the package
(``reaf_lightning.configs``, the repository's ``configs/`` folder), so a wheel
installed anywhere runs the quick start and every paper row without a checkout
(``reaf-lightning fit --config quickstart``). A ``--config`` value that exists
is used as it is (a path always wins over a name); otherwise it is the config's
path below that folder, with or without ``.yaml`` and a leading ``configs/``. An
unknown name is one line naming close names; a name never reaches outside the
folder; values holding YAML text (``--config '{trainer: {max_epochs: 1}}'``) are
left alone.

This module imports neither torch nor Lightning, so that ``--help`` of the light
commands answers at once; :class:`ShortHelpFormatter` keeps the help of a parser
built from third-party docstrings (Lightning's ``Trainer``) to one sentence per
option. Not part of the paper.
"""

from __future__ import annotations

import copy
import difflib
import importlib.resources
import os
import re
import signal
import stat
import sys
import threading
from argparse import SUPPRESS, Action
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from jsonargparse import ArgumentError, ArgumentParser, DefaultHelpFormatter, Namespace

from reaf_lightning.errors import (
    DEBUG_ENV,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ConfigError,
    ReafError,
    message_of,
    one_line,
)
from reaf_lightning.io.inputs import file_kind

__all__ = [
    "MAX_MESSAGE",
    "ShortHelpFormatter",
    "command_line",
    "config_dir",
    "config_files",
    "config_names",
    "find_config",
    "parse",
    "prepare_arguments",
    "run_command",
    "run_main",
]

#: Characters of a parse error shown; ``REAF_DEBUG=1`` shows all of it.
MAX_MESSAGE = 400
# The end of a docstring's first sentence: a full stop (not of "e.g.", "i.e."), then a space
# and a capital letter.
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)`'\"])(?<!e\.g)(?<!i\.e)\.(?=\s+[A-Z])")


def command_line(args: Sequence[str] | None) -> list[str]:
    """The arguments a command runs with: ``args`` when given, else ``sys.argv[1:]``."""
    return list(sys.argv[1:] if args is None else (str(arg) for arg in args))


def prepare_arguments(argv: Sequence[str], groups: Sequence[str] = ()) -> list[str]:
    """The command line a parser may read: config names resolved, every file it names checked.

    The one pass over a command line before its parser sees it (every command
    calls it once, from its ``main``):

    * a ``--config``/``-c`` value that names a packaged config is replaced by its
      file (:func:`find_config`; ``groups`` are the folders tried after the name
      as given, e.g. ``("analysis",)`` so that ``reaf-analysis --config figure2``
      works);
    * every config file is read with :func:`reaf_lightning.io.read_yaml` (bounded,
      regular files only, duplicate keys refused, one line naming the file), before
      jsonargparse opens it with a plain ``open`` that would wait forever on a FIFO;
    * any other value that names an existing FIFO, socket or device is refused (no
      option of the package takes one);
    * jsonargparse's YAML loader is made strict for the nested files and values it
      reads itself (:func:`reaf_lightning.io.install_strict_yaml`).

    Raises:
        ConfigError: an unknown config name, or a file that cannot be read as a config.
    """
    from reaf_lightning.io import install_strict_yaml, read_yaml

    out = [str(arg) for arg in argv]
    for i, arg in enumerate(out):
        flag, joined, value = arg.partition("=")
        if joined and flag in _FLAGS:
            out[i] = f"{flag}={_config_file(value, groups)}"
        elif i > 0 and out[i - 1] in _FLAGS and not arg.startswith("-"):
            out[i] = _config_file(arg, groups)
    configs = config_files(out)
    for value in configs:
        read_yaml(value)
    for token in out:
        value = token.split("=", 1)[1] if token.startswith("--") and "=" in token else token
        if value in configs:
            continue
        try:
            mode = os.stat(value).st_mode
        except (OSError, ValueError):
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ConfigError(
                f"{value} is {file_kind(mode)}, not a regular file; the command reads and "
                "writes regular files only"
            )
    install_strict_yaml()
    return out


def config_files(argv: Sequence[str]) -> list[str]:
    """The ``--config``/``-c`` files of a prepared command line (a command's inputs)."""
    files = []
    for flag, value in zip(argv, [*argv[1:], ""]):
        flag, joined, joined_value = flag.partition("=")
        value = joined_value if joined else value
        if flag in _FLAGS and not _YAML_TEXT & set(value):
            files.append(value)
    return files


def _config_file(value: str, groups: Sequence[str]) -> str:
    return value if _YAML_TEXT & set(value) else find_config(value, groups)


def parse(parser: ArgumentParser, argv: Sequence[str], *, defaults: bool = True) -> Namespace:
    """``parser.parse_args(argv)``; a parse error becomes one :class:`ConfigError` line.

    Args:
        parser: a jsonargparse parser built with ``exit_on_error=False`` (so that the
            error reaches here instead of jsonargparse printing its whole usage).
        argv: the command line, as :func:`command_line` returns it.
        defaults: ``False`` gives only what the user set (``reaf-analysis`` merges
            a checkpoint's data settings under them).
    """
    try:
        return parser.parse_args(list(argv), defaults=defaults)
    except ArgumentError as err:
        raise ConfigError(_shorten(one_line(err))) from None


def run_main(
    prog: str,
    work: Callable[[list[str]], object],
    args: Sequence[str] | None = None,
    on_interrupt: Callable[[], str] | None = None,
) -> NoReturn:
    """Run ``work`` on the command line under :func:`~reaf_lightning.commands.run_command`, exit.

    Args:
        prog: the command's name, the prefix of every message.
        work: parses (with :func:`parse`) and does the work; raises
            :class:`~reaf_lightning.errors.ReafError` for user errors.
        args: the command line without the program name; ``None``: ``sys.argv[1:]``.
        on_interrupt: what to add to the Ctrl-C line (e.g. where the last checkpoint is).

    Raises:
        SystemExit: always, with the exit status of :mod:`reaf_lightning.errors`.
    """
    argv = command_line(args)
    raise SystemExit(run_command(prog, lambda: work(argv), on_interrupt))


def _shorten(text: str) -> str:
    if len(text) <= MAX_MESSAGE or os.environ.get(DEBUG_ENV) == "1":
        return text
    return text[:MAX_MESSAGE].rsplit(" ", 1)[0] + f" ... ({DEBUG_ENV}=1 shows all; see --help)"


class ShortHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help with each option's text cut to its first sentence.

    Options built from Lightning's docstrings (``Trainer``, ``ModelCheckpoint``)
    carry whole paragraphs, notes and examples; ``--help`` shows the sentence
    that says what the option is, with its type and default, and the rest stays
    in Lightning's documentation. ``--print_config`` is not affected.
    """

    def add_argument(self, action: Action) -> None:
        if action.help and action.help != SUPPRESS:
            short = first_sentence(action.help)
            if short != action.help:
                action = copy.copy(action)  # the parser's own action keeps its full text
                action.help = short
        super().add_argument(action)


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` that says more than its default, whitespace collapsed.

    The default is shown anyway (``default: ...``), so a leading "Defaults to ``None``."
    is skipped in favour of the sentence after it.
    """
    text = one_line(text)
    while (match := _SENTENCE_END.search(text)) is not None:
        sentence, rest = text[: match.end()], text[match.end() :].lstrip()
        if not sentence.startswith("Default"):
            return sentence
        text = rest
    return text


# -- configs found by name: --config quickstart reads the packaged quickstart.yaml -----------
_FLAGS = ("--config", "-c")
_PREFIX = "configs/"
_SUFFIXES = (".yaml", ".yml")
_YAML_TEXT = set(":{}[]\n ")  # a name or path never holds these; YAML text does


def config_dir() -> Path:
    """The folder of the packaged configs (``reaf_lightning.configs``, the repository's
    ``configs/``)."""
    return Path(str(importlib.resources.files("reaf_lightning.configs")))


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

    A directory is not a config file: ``--config quickstart`` beside a folder named
    ``quickstart`` still reads the packaged config.

    Raises:
        ConfigError: neither a file nor a packaged config's name; names the close ones.
    """
    if (os.path.lexists(value) and not os.path.isdir(value)) or _YAML_TEXT & set(value):
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
    what = "is a directory, not a config file" if os.path.isdir(value) else "does not exist"
    raise ConfigError(
        f"--config {value!r} {what}: no such file, and no packaged config of that name; {hint}"
    )


# -- the exit-status policy (reaf_lightning.errors lists the statuses) ----------------------
class _SigintRecorder:
    """Remember that Ctrl-C was pressed, then raise ``KeyboardInterrupt`` as Python does.

    Libraries may turn the ``KeyboardInterrupt`` into something else (Lightning
    ends with ``sys.exit(1)`` after its own clean-up), so the exit status is
    decided from this record, not from the exception that arrives.
    """

    def __init__(self) -> None:
        self.pressed = False

    def __call__(self, signum: int, frame: object) -> None:
        self.pressed = True
        raise KeyboardInterrupt


def run_command(
    prog: str,
    body: Callable[[], object],
    on_interrupt: Callable[[], str] | None = None,
) -> int:
    """Run a command's ``body`` under the policy above and return its exit status.

    Args:
        prog: the command's name, the prefix of every message.
        body: does the work; raises :class:`ReafError` for user errors.
        on_interrupt: returns what to add to the Ctrl-C line (e.g. where the
            last checkpoint is); called only after an interruption.
    """
    if os.environ.get(DEBUG_ENV) == "1":
        body()
        return EXIT_OK
    recorder = _SigintRecorder()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, recorder) if main_thread else None
    try:
        body()
    except ReafError as err:
        _say(prog, f"error: {message_of(err)}")
        return err.exit_code
    except (KeyboardInterrupt, SystemExit) as err:
        if not recorder.pressed and not isinstance(err, KeyboardInterrupt):
            raise
        note = on_interrupt() if on_interrupt else ""
        _say(prog, "interrupted (Ctrl-C)" + (f"; {note}" if note else ""))
        return EXIT_INTERRUPTED
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGINT, previous)
    return EXIT_OK


def _say(prog: str, line: str) -> None:
    print(f"{prog}: {line}", file=sys.stderr, flush=True)
