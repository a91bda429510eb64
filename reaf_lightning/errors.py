"""One error and exit-code policy for every command of the package.

``reaf-lightning``, ``reaf-analysis``, ``reaf-zoo`` and ``reaf-report`` report
failures the same way (documented once, in ``docs/reliability.md``):

=====  =======================================================================
exit   meaning
=====  =======================================================================
0      success
1      a bug: Python's traceback, unchanged
2      a user error: ``<command>: error: <one line>`` on stderr
3      a numerical fault (non-finite loss or weights); the last good
       checkpoint is kept
130    interrupted (Ctrl-C); one line says where the last checkpoint is
143    preempted (SIGTERM); ``last.ckpt`` was saved first
=====  =======================================================================

A user error is any :class:`ReafError` (the package raises these where it
rejects an input on purpose) or a parse error of the command line. Messages of
third-party libraries are shown as they are, whitespace collapsed to one line,
never reworded. ``REAF_DEBUG=1`` re-raises every error with its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

__all__ = [
    "EXIT_BUG",
    "EXIT_INTERRUPTED",
    "EXIT_NUMERICAL",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "EXIT_USER_ERROR",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "NumericalError",
    "OutputError",
    "ReafError",
    "one_line",
    "run_command",
]

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_NUMERICAL = 3
EXIT_INTERRUPTED = 128 + 2  # what a shell reports for a process ended by SIGINT
EXIT_PREEMPTED = 128 + 15  # ... and by SIGTERM


class ReafError(Exception):
    """A problem the user can fix. The message is one line naming the value and what is valid."""

    exit_code: int = EXIT_USER_ERROR


class ConfigError(ReafError, ValueError):
    """The configuration (YAML files, flags, settings) is invalid."""


class CheckpointError(ReafError, ValueError):
    """A checkpoint cannot be used: missing, corrupt, unsafe, or for another network."""


class DataError(ReafError, ValueError):
    """A dataset is missing, unreadable, laid out wrongly or holds undecodable files."""


class OutputError(ReafError, OSError):
    """An output location cannot be written (permissions, not a directory, disk full)."""


class NumericalError(ReafError, FloatingPointError):
    """Training produced non-finite values; the last good checkpoint is kept."""

    exit_code = EXIT_NUMERICAL


def one_line(text: object) -> str:
    """Collapse all whitespace (newlines included) to single spaces."""
    return " ".join(str(text).split())


def run_command(prog: str, body: Callable[[], object]) -> int:
    """Run a command's ``body`` under the policy above and return its exit status.

    Args:
        prog: the command's name, the prefix of every message.
        body: does the work; raises :class:`ReafError` for user errors.
    """
    if os.environ.get("REAF_DEBUG") == "1":
        body()
        return EXIT_OK
    try:
        body()
    except ReafError as err:
        print(f"{prog}: error: {one_line(err) or type(err).__name__}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK
