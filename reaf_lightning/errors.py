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
130    interrupted (Ctrl-C): ``<command>: interrupted (Ctrl-C)`` and, for
       training, where the last checkpoint is
143    preempted (SIGTERM); ``last.ckpt`` was saved first
=====  =======================================================================

A user error is any :class:`ReafError`: the package raises these where it
rejects an input on purpose, and the parse errors of every command line become
:class:`ConfigError` (:func:`reaf_lightning.commands.parse`). Each command's
``main()`` is :func:`reaf_lightning.commands.run_main`, which runs the work
through :func:`run_command`. Messages of third-party libraries are
shown as they are, whitespace collapsed to one line, never reworded; the one
exception is an error raised in a ``DataLoader`` worker, which PyTorch re-raises
in the main process with the worker's whole traceback as its message: the
original last line (the error's own message) is shown instead. Not part of the
paper. ``REAF_DEBUG=1`` re-raises every error with its traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

__all__ = [
    "DEBUG_ENV",
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
    "message_of",
    "one_line",
    "run_command",
]

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_NUMERICAL = 3
EXIT_INTERRUPTED = 128 + 2  # what a shell reports for a process ended by SIGINT
EXIT_PREEMPTED = 128 + 15  # ... and by SIGTERM
DEBUG_ENV = "REAF_DEBUG"


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


_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def message_of(err: BaseException) -> str:
    """The one line a user sees for ``err``: its message, or its type when it has none.

    PyTorch re-raises an exception from a ``DataLoader`` worker (or its pin-memory
    thread) as the same type whose message is ``Caught X in DataLoader worker
    process N.`` followed by the worker's traceback; its last line is
    ``<module>.<type>: <the original message>``, which is what is shown.
    """
    text = str(err)
    if _WORKER_TRACEBACK in text:
        last = text.rstrip().splitlines()[-1]
        for name in (f"{type(err).__module__}.{type(err).__qualname__}", type(err).__name__):
            if last.startswith(f"{name}: "):
                text = last[len(name) + 2 :]
                break
    return one_line(text) or type(err).__name__


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
