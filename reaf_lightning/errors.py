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
through :func:`reaf_lightning.commands.run_command`. Messages of third-party libraries are
shown as they are, whitespace collapsed to one line, never reworded; the one
exception is an error raised in a ``DataLoader`` worker, which PyTorch re-raises
in the main process with the worker's whole traceback as its message: the
original last line (the error's own message) is shown instead. Not part of the
paper. ``REAF_DEBUG=1`` re-raises every error with its traceback.
"""

from __future__ import annotations

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
    "CorruptImageError",
    "CorruptImageWarning",
    "DatasetLayoutError",
    "DatasetNotFoundError",
    "DatasetPermissionError",
    "message_of",
    "one_line",
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


# -- the data modules' errors: every dataset problem is one of these, raised from
# prepare_data/setup (or, with on_corrupt="skip", from the loader), never a decoder's traceback.
# Each takes its message as its only argument, so it pickles unchanged and a DataLoader worker
# re-raises it in the main process with its own type.
class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset root, split folder or data file does not exist."""


class DatasetPermissionError(DataError, PermissionError):
    """A dataset folder or file exists but this user may not read it."""


class DatasetLayoutError(DataError):
    """The dataset exists but its layout is wrong (empty class, class mismatch, bad shapes,
    symlink loops, pickles that hold no images or objects other than arrays)."""


class CorruptImageError(DataError):
    """An image file cannot be decoded, or holds pixels with no agreed RGB meaning."""


class CorruptImageWarning(UserWarning):
    """An image file could not be decoded and was skipped (``on_corrupt="skip"``)."""
