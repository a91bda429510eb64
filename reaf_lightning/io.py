"""The package's file helpers: one atomic writer, one writability check, one YAML
reader and one checkpoint loader, shared by training, analysis, the zoo and the
report.

Not part of the paper: these keep long runs from losing work and keep every
command's failures to one line (see :mod:`reaf_lightning.errors`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import socket
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError, OutputError, one_line

__all__ = ["atomic_outputs", "ensure_writable", "load_checkpoint", "read_yaml"]


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


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Write several files so that either all of them appear, complete, or none does.

    Yields temporary paths in the destination directories (hidden, same suffix,
    so writers that pick a format by extension keep working). When the body
    completes, each temporary is ``fsync``-ed and renamed onto its final path;
    otherwise all temporaries are deleted and the exception propagates.
    Existing files at the final paths are only replaced on success. The
    temporary of a writer killed by ``SIGKILL`` is removed by the next write of
    the same file on the same host.

    Raises:
        OutputError: a destination cannot be written (naming it and why,
            "no space left on device" for a full disk).
    """
    finals = [Path(p) for p in paths]
    temps: list[Path] = []
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
        for temp, final in zip(temps, finals, strict=True):
            os.replace(temp, final)
            _fsync_dir(final.parent)
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


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


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, refusing what would otherwise be misread silently.

    Refused, each with one line naming the file: a missing or unreadable file,
    YAML syntax errors (with line and column), an empty file or one whose top
    level is not a mapping, and a key given twice in the same mapping (plain
    YAML loaders keep the last one without a word).

    Raises:
        ConfigError: as above.
    """
    import yaml

    class _StrictLoader(yaml.SafeLoader):
        pass

    def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"{path}: key {key!r} is given twice (lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}); keep one"
                )
            seen[key] = key_node.start_mark.line + 1
        return loader.construct_mapping(node, deep=True)

    _StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {file}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {file}: {one_line(err)}") from err
    try:
        content = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or one_line(err)
        raise ConfigError(f"{file} is not valid YAML: {problem}{where}") from err
    if content is None:
        raise ConfigError(f"config file {file} is empty; it must hold a mapping of settings")
    if not isinstance(content, dict):
        raise ConfigError(
            f"config file {file} holds a {type(content).__name__}, not a mapping of settings "
            "(key: value lines)"
        )
    return content


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
