"""All-or-nothing file outputs for the analysis (figures, CSV tables).

A crash, a full disk or Ctrl-C in the middle of writing must never leave a
half-written figure or table that looks like a finished result. Every output
is first written to a hidden temporary name in the destination directory (same
file system, so the final ``os.replace`` is atomic) and only renamed once *all*
outputs of a group have been written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["atomic_outputs"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Write several files so that either all of them appear or none does.

    Yields temporary paths (one per requested path, same suffix so that
    writers choosing a format by extension keep working). If the ``with``
    body completes, each temporary file is renamed onto its final path;
    otherwise all temporaries are deleted and the exception propagates.
    Existing files at the final paths are only replaced on success.

    Args:
        paths: Final destinations; their parent directories are created.

    Raises:
        FileNotFoundError: if the body did not write one of the temporary files.
    """
    finals = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(
                prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent
            )
            os.close(fd)
            temps.append(Path(name))
            os.chmod(name, 0o666 & ~_umask())  # mkstemp's 0600 would survive the rename
        yield list(temps)
        for temp in temps:
            if temp.stat().st_size == 0:
                raise FileNotFoundError(f"nothing was written to the temporary file {temp}")
        for temp, final in zip(temps, finals, strict=True):
            os.replace(temp, final)
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
