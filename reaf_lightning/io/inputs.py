"""Reading untrusted files: a regular file of bounded size, never a FIFO or a device.

Not part of the paper: every command reads files it did not write (checkpoints,
metrics, configs); none of them may hang the command or fill its memory.
"""

from __future__ import annotations

import os
import stat

from reaf_lightning.errors import DataError, ReafError, one_line

__all__ = ["file_kind", "read_bounded", "shown"]


def read_bounded(
    path: str | os.PathLike[str],
    max_bytes: int,
    what: str = "file",
    error: type[ReafError] = DataError,
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, or one line saying why not.

    Untrusted paths may name a FIFO (an ordinary ``open`` waits forever for a
    writer), a device (``/dev/zero`` never ends) or a huge file: the file is
    opened non-blocking, checked to be a regular file on the opened descriptor
    (so a link swapped in between cannot fool the check) and read up to the cap.

    Raises:
        error: missing, unreadable, not a regular file, or larger than ``max_bytes``.
    """
    file = shown(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} {file} does not exist") from None
    except OSError as err:
        raise error(f"cannot read {what} {file}: {err.strerror or one_line(err)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {file} is {file_kind(info.st_mode)}, not a regular file; not read")
        if info.st_size > max_bytes:
            raise error(
                f"{what} {file} has {info.st_size:,} bytes, more than the {max_bytes:,} "
                "expected of it; not read"
            )
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise error(f"cannot read {what} {file}: {err.strerror or one_line(err)}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:  # grew while being read
        raise error(f"{what} {file} is larger than {max_bytes:,} bytes; not read")
    return data


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` printable on any terminal: bytes of a file name that are not UTF-8 as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"
