"""Writing outputs: the rules every command's outputs follow, and all-or-nothing writes.

Output rules (ours; one place, every command): an output is written only over a regular
file or over nothing (a directory, FIFO, socket or device node is refused); a symbolic
link is refused, never followed or replaced (following it would write somewhere the
user did not name, replacing it would silently break the user's link); an output is
never one of the command's inputs; two outputs of one command never share a path (also
through links); a file-name prefix (``--stem``) is a plain name that cannot leave its
directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from reaf_lightning.errors import ConfigError, OutputError, one_line

from .inputs import file_kind

__all__ = ["atomic_outputs", "check_outputs", "check_stem", "ensure_writable"]


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX; a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _output_error(path: Path, err: OSError) -> OutputError:
    if err.errno == errno.ENOSPC:
        return OutputError(f"cannot write {path}: no space left on device")
    reason = err.strerror or one_line(err)
    return OutputError(f"cannot write {path}: {reason}")


_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _temporary_name(final: Path, pid: int | str) -> str:
    """``.<stem>.<host>.<pid>.tmp<suffix>``: hidden, same suffix, owner recognisable."""
    return f".{final.stem}.{_HOST}.{pid}.tmp{final.suffix}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _remove_stale_temporaries(final: Path) -> None:
    """Delete this host's temporaries of ``final`` whose writer process is gone.

    A writer killed with ``SIGKILL`` cannot clean up; a checkpoint-sized hidden
    file would otherwise stay next to every checkpoint it was writing.
    """
    prefix, suffix = f".{final.stem}.{_HOST}.", f".tmp{final.suffix}"
    with contextlib.suppress(OSError):
        for entry in os.scandir(final.parent):
            pid = entry.name[len(prefix) : -len(suffix)]
            if entry.name.startswith(prefix) and entry.name.endswith(suffix) and pid.isdigit():
                if int(pid) != os.getpid() and not _alive(int(pid)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)


def _create_temporary(final: Path) -> Path:
    """Create the empty temporary of ``final`` (mode from the umask, as a normal file)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final)
    temp = final.with_name(_temporary_name(final, os.getpid()))
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()  # left by an earlier process with the same pid (reboot, container)
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return temp


def check_stem(stem: str, option: str = "--stem") -> str:
    """A file-name prefix that stays in its directory: no separator, not ``.``/``..``.

    Raises:
        ConfigError: naming the value and what is valid.
    """
    bad = (
        not stem
        or stem in (".", "..")
        or "/" in stem
        or (os.sep != "/" and os.sep in stem)
        or (os.altsep is not None and os.altsep in stem)
        or "\0" in stem
    )
    if bad:
        raise ConfigError(
            f"{option} {stem!r} must be a plain file-name prefix (no '/', not '.' or '..'), "
            "so that every output stays in the output directory"
        )
    return stem


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """The resolved path and, for an existing file, its (device, inode) pair."""
    resolved = os.path.realpath(path)
    try:
        info = os.stat(resolved)
    except OSError:
        return resolved, None
    return resolved, (info.st_dev, info.st_ino)


def check_outputs(
    paths: Sequence[str | os.PathLike[str]],
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> list[Path]:
    """Apply the output rules of the module docstring to one command's outputs.

    Args:
        paths: every file the command will write.
        inputs: every file the command reads (checkpoints, metrics, configs); an
            output may not be one of them, by path, through a link or as a hard link.

    Returns:
        ``paths`` as :class:`~pathlib.Path` objects.

    Raises:
        OutputError: one line naming the output and the rule it breaks.
    """
    finals = [Path(p) for p in paths]
    taken: dict[object, Path] = {}
    for inp in inputs:
        resolved, inode = _identity(Path(inp))
        taken[resolved] = Path(inp)
        if inode is not None:
            taken[inode] = Path(inp)
    outputs: dict[object, Path] = {}
    for final in finals:
        try:
            info = os.lstat(final)
        except FileNotFoundError:
            info = None
        except OSError as err:
            raise _output_error(final, err) from err
        if info is not None and stat.S_ISLNK(info.st_mode):
            raise OutputError(
                f"output {final} is a symbolic link (to {os.readlink(final)}); outputs are "
                "never written through or over links: give the real path or remove the link"
            )
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise OutputError(
                f"output {final} is {file_kind(info.st_mode)}; an output may only replace a "
                "regular file or be new"
            )
        resolved, inode = _identity(final)
        for key in (resolved, inode):
            if key is None:
                continue
            if key in taken:
                raise OutputError(
                    f"output {final} is the input {taken[key]} of this command; write elsewhere"
                )
            if key in outputs:
                raise OutputError(
                    f"outputs {outputs[key]} and {final} are the same file; give each its own path"
                )
            outputs[key] = final
    return finals


@contextlib.contextmanager
def atomic_outputs(
    paths: Sequence[str | os.PathLike[str]],
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> Iterator[list[Path]]:
    """Write several files so that either all of them appear, complete, or none does.

    The paths are first checked by :func:`check_outputs` (with ``inputs``).
    Yields temporary paths in the destination directories (hidden, same suffix,
    so writers that pick a format by extension keep working). When the body
    completes, each temporary is ``fsync``-ed and renamed onto its final path;
    otherwise all temporaries are deleted and the exception propagates.
    Existing files at the final paths are only replaced on success: if a rename
    fails part-way (a full disk, a vanished directory), the files already
    replaced get their previous content back (kept as hard links, or copies
    where links are not supported). The temporary of a writer killed by
    ``SIGKILL`` is removed by the next write of the same file on the same host.

    Raises:
        OutputError: an output breaks a rule of :func:`check_outputs`, or a
            destination cannot be written (naming it and why, "no space left on
            device" for a full disk).
    """
    finals = check_outputs(paths, inputs)
    temps: list[Path] = []
    backups: dict[Path, Path | None] = {}
    try:
        for final in finals:
            try:
                temps.append(_create_temporary(final))
            except OSError as err:
                raise _output_error(final, err) from err
        try:
            yield list(temps)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
                raise _output_error(finals[0], err) from err
            raise
        for temp, final in zip(temps, finals, strict=True):
            if temp.stat().st_size == 0:
                raise FileNotFoundError(f"nothing was written to the temporary file for {final}")
            try:
                with open(temp, "rb+") as handle:
                    os.fsync(handle.fileno())
            except OSError as err:
                raise _output_error(final, err) from err
        check_outputs(finals, inputs)  # nothing swapped in while the body ran
        for final in finals:
            backups[final] = _backup(final)
        replaced: list[Path] = []
        try:
            for temp, final in zip(temps, finals, strict=True):
                os.replace(temp, final)
                replaced.append(final)
        except OSError as err:
            _restore(replaced, backups)
            raise _output_error(final, err) from err
        for directory in dict.fromkeys(final.parent for final in finals):
            _fsync_dir(directory)
    finally:
        for leftover in [*temps, *(b for b in backups.values() if b is not None)]:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def _backup(final: Path) -> Path | None:
    """A hidden second name (or copy) of ``final``'s current content; ``None`` if it is new."""
    if not final.exists():
        return None
    backup = final.with_name(f".{final.stem}.{_HOST}.{os.getpid()}.bak{final.suffix}")
    with contextlib.suppress(FileNotFoundError):
        backup.unlink()
    try:
        os.link(final, backup)
    except OSError:
        try:
            shutil.copy2(final, backup)
        except OSError as err:
            raise _output_error(final, err) from err
    return backup


def _restore(replaced: Sequence[Path], backups: dict[Path, Path | None]) -> None:
    """Undo the renames already done: old content back, new files removed."""
    for final in replaced:
        backup = backups.get(final)
        with contextlib.suppress(OSError):
            if backup is None:
                final.unlink()
            else:
                os.replace(backup, final)


def ensure_writable(directory: str | os.PathLike[str], what: str = "output directory") -> Path:
    """Create ``directory`` if needed and prove a file can be written there, before any work.

    Raises:
        OutputError: naming the directory and the reason (not a directory,
            permission denied, read-only file system, no space left).
    """
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError as err:
        raise OutputError(f"{what} {path} cannot be created: a file is in the way") from err
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OutputError(f"{what} {path}: no space left on device") from err
        raise OutputError(f"{what} {path} is not writable: {err.strerror or err}") from err
    return path
