"""Reading untrusted files: a regular file of bounded size, never a FIFO or a device; checkpoints
only through the safe unpickler; a class named in a file only from an allow-list.

Not part of the paper: every command reads files it did not write (checkpoints,
metrics, configs); none of them may hang the command or fill its memory, and what
they name is a name, never code to run (:func:`import_class`).
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reaf_lightning.errors import CheckpointError, ConfigError, DataError, ReafError, one_line

__all__ = ["file_kind", "import_class", "load_checkpoint", "read_bounded", "shown"]


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


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


def read_text(
    path: str | os.PathLike[str],
    max_bytes: int,
    what: str = "file",
    error: type[ReafError] = DataError,
) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` (:func:`read_bounded`), a
    byte-order mark dropped, or one line saying why not.

    Raises:
        error: as :func:`read_bounded`, or the bytes are not UTF-8 (naming the first bad one).
    """
    raw = read_bounded(path, max_bytes, what, error)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(f"{what} {shown(path)} is not UTF-8 text (byte {err.start})") from None


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` printable on any terminal, on one line: bytes of a file name that are not
    UTF-8 as ``\\xNN``, control characters (a newline, a tab) as Python escapes them."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


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


# -- checkpoints: one loader, safe unless the user says otherwise ----------------------------
_PICKLE_PROTOCOL_MARK = 0x80


def _looks_like_torch_file(path: Path) -> bool:
    """A ``torch.save`` file is a zip archive (current format) or a raw pickle (legacy)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return True  # let torch.load report the I/O problem
    return head.startswith(b"PK") or (len(head) > 0 and head[0] == _PICKLE_PROTOCOL_MARK)


def load_checkpoint(path: str | os.PathLike[str], *, weights_only: bool = True) -> Any:
    """``torch.load`` a checkpoint on the CPU, safely unless the user says otherwise.

    Every command loads checkpoints through this function, so every command
    refuses the same files: by default with ``torch.load(weights_only=True)``,
    which cannot execute code from the file. A checkpoint holding other Python
    objects is refused with the reason; only an explicit ``--weights_only
    false`` (the same flag in every command) loads it with the full unpickler.

    Raises:
        CheckpointError: missing, not a file, not a PyTorch file at all, damaged,
            or holding objects the safe loader refuses.
    """
    import torch

    file = Path(path)
    if not file.exists():
        raise CheckpointError(f"checkpoint not found: {file}")
    if not file.is_file():
        raise CheckpointError(f"checkpoint is not a file: {file}")
    if not os.access(file, os.R_OK):
        raise CheckpointError(f"checkpoint {file} is not readable (permission denied)")
    if not _looks_like_torch_file(file):
        raise CheckpointError(
            f"{file} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        if weights_only and "Weights only load failed" in str(err):
            reason = _refusal_reason(str(err))
            raise CheckpointError(
                f"{file} was refused by the safe loader: it holds Python objects that loading "
                f"would have to execute ({reason}); only if you trust the file's origin, pass "
                "--weights_only false"
            ) from err
        raise CheckpointError(_damaged(file, err)) from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(_damaged(file, err)) from err


def _refusal_reason(message: str) -> str:
    """The line of torch's refusal that names the offending global."""
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return one_line(line)[:200]
    return "unsupported global"


def _damaged(file: Path, err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return (
        f"corrupt checkpoint {file}: torch.load fails ({type(err).__name__}: {first[:200]}); "
        "the file is damaged or incomplete"
    )


def import_class(
    class_path: str,
    what: str,
    allowed: Mapping[str, str] | None = None,
    source: str = "",
    option: str = "",
) -> type:
    """The class ``class_path`` names: the one place where a class path becomes a class.

    A class path read from a file is untrusted input: it is only matched against
    ``allowed``, and the allow-list's own path is imported, never the file's text. A
    class the user names on the command line (``allowed=None``) is imported as asked.

    Args:
        class_path: ``"package.module.Class"``.
        what: what the class is, for messages (``"data module"``).
        allowed: for a path read from a file: class name -> the package's own class
            path; the file's path must give that name in that package or one of its
            modules (``reaf_lightning.data.digits.DigitsDataModule`` matches
            ``reaf_lightning.data.DigitsDataModule``).
        source: where a path read from a file came from, for messages.
        option: the command-line option that names such a class instead.

    Raises:
        ConfigError: a path off the allow-list (nothing imported), or one that cannot be
            imported.
    """
    if allowed is not None:
        module, _, name = class_path.rpartition(".")
        home = allowed.get(name, "").rpartition(".")[0]
        if not home or not (module == home or module.startswith(home + ".")):
            instead = f": name the class yourself with {option}" if option else ""
            raise ConfigError(
                f"{source} names the {what} {class_path!r}, which is not one of this "
                f"package's ({', '.join(allowed)}); it is not imported{instead}"
            )
        class_path = allowed[name]
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"cannot import the {what} {class_path!r}: {one_line(err)}") from err
