"""How every command of the package reads its command line and runs: one helper for all four.

``reaf-lightning``, ``reaf-analysis``, ``reaf-report`` and ``reaf-zoo`` are each
a parser plus a function that does the work. Their ``main(args=None)`` is one
line, :func:`run_main`, which

* resolves the arguments once (:func:`command_line`): ``args`` when a test or a
  notebook passes them, else ``sys.argv[1:]``; nothing below reads ``sys.argv``
  again, so a test's own command line (pytest's) never leaks into a command;
* runs the work under the exit-status policy of :mod:`reaf_lightning.errors`
  (user error 2, Ctrl-C 130, ...) and exits with its status.

:func:`parse` is the one place where a parse error of the command line becomes
a one-line :class:`~reaf_lightning.errors.ConfigError` in jsonargparse's own
words; ``--help`` prints and exits 0 as jsonargparse does.

This module imports neither torch nor Lightning, so that ``--help`` of the light
commands answers at once; :class:`ShortHelpFormatter` keeps the help of a parser
built from third-party docstrings (Lightning's ``Trainer``) to one sentence per
option. Not part of the paper.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from argparse import SUPPRESS, Action
from collections.abc import Callable, Sequence
from typing import NoReturn

from jsonargparse import ArgumentError, ArgumentParser, DefaultHelpFormatter, Namespace

from reaf_lightning.errors import DEBUG_ENV, ConfigError, one_line, run_command

__all__ = ["MAX_MESSAGE", "ShortHelpFormatter", "command_line", "parse", "run_main"]

#: Characters of a parse error shown; ``REAF_DEBUG=1`` shows all of it.
MAX_MESSAGE = 400
# The end of a docstring's first sentence: a full stop (not of "e.g.", "i.e."), then a space
# and a capital letter.
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)`'\"])(?<!e\.g)(?<!i\.e)\.(?=\s+[A-Z])")


def command_line(args: Sequence[str] | None) -> list[str]:
    """The arguments a command runs with: ``args`` when given, else ``sys.argv[1:]``."""
    return list(sys.argv[1:] if args is None else (str(arg) for arg in args))


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
    """Run ``work`` on the command line under :func:`~reaf_lightning.errors.run_command`, exit.

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
