"""Errors of the data modules: one line naming the path and saying what is valid.

Every dataset problem is raised as one of these from ``prepare_data``/``setup``
(or, in ``on_corrupt="skip"`` mode, from the loader), never as a decoder's
traceback. All are :class:`reaf_lightning.errors.DataError`, so every command
reports them as a user error (exit 2). Each takes its message as its only
argument, so it pickles unchanged and a DataLoader worker re-raises it in the
main process with its own type.
"""

from __future__ import annotations

from reaf_lightning.errors import DataError

__all__ = [
    "CorruptImageError",
    "CorruptImageWarning",
    "DatasetLayoutError",
    "DatasetNotFoundError",
    "DatasetPermissionError",
]


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
