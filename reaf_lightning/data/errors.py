"""Errors raised by the data modules before training starts.

Every dataset problem (missing files, empty class folders, mismatched class
sets, corrupt images in strict mode) is reported as one of these exceptions
from ``prepare_data``/``setup`` with a single-line message that names the path
and says what a valid layout looks like, so that a run never dies half-way
through an epoch with an opaque decoder traceback.
"""

from __future__ import annotations

__all__ = ["DatasetNotFoundError", "DatasetLayoutError", "CorruptImageError"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root, split folder or data file does not exist."""


class DatasetLayoutError(ValueError):
    """The dataset exists but its layout is wrong (empty class, class mismatch, bad shapes)."""


class CorruptImageError(ValueError):
    """One or more image files cannot be decoded and ``on_corrupt="error"`` was requested."""
