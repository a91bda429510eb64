"""The package's file helpers, shared by training, analysis, the zoo and the report.

* Reading untrusted files: :func:`read_bounded` (a regular file of bounded size, never a
  FIFO or device that could hang or never end), :func:`read_yaml` and
  :func:`check_yaml_keys` (duplicate keys refused, merge keys ``<<:`` accepted), and
  :func:`load_checkpoint` (the safe unpickler).
* Writing outputs: :func:`check_outputs` (the rules every command's outputs follow) and
  :func:`atomic_outputs` (all of a command's files replaced together or none).

Output rules (ours; one place, every command): an output is written only over a regular
file or over nothing (a directory, FIFO, socket or device node is refused); a symbolic
link is refused, never followed or replaced (following it would write somewhere the
user did not name, replacing it would silently break the user's link); an output is
never one of the command's inputs; two outputs of one command never share a path (also
through links); a file-name prefix (``--stem``) is a plain name that cannot leave its
directory.

Not part of the paper: these keep long runs from losing work and keep every
command's failures to one line (see :mod:`reaf_lightning.errors`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import socket
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError, DataError, OutputError, ReafError, one_line

__all__ = [
    "CONFIG_MAX_BYTES",
    "SEED_RANGE",
    "atomic_outputs",
    "check_outputs",
    "check_seed",
    "check_stem",
    "check_yaml_keys",
    "ensure_writable",
    "install_strict_yaml",
    "load_checkpoint",
    "read_bounded",
    "read_yaml",
    "shown",
]

#: Largest configuration file read (ours: the paper's configs are under 4 KiB).
CONFIG_MAX_BYTES = 4 * 1024 * 1024


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
            raise error(f"{what} {file} is {_kind(info.st_mode)}, not a regular file; not read")
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


def _kind(mode: int) -> str:
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
                f"output {final} is {_kind(info.st_mode)}; an output may only replace a "
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


_MERGE_TAG = "tag:yaml.org,2002:merge"


def check_yaml_keys(text: str, source: str) -> None:
    """Refuse a key given twice in one mapping of the YAML ``text`` (read from ``source``).

    Plain YAML loaders keep the last value without a word. Standard merge keys
    (``<<: *base``) are accepted: a key merged in and then given again is an
    override, as YAML defines it, not a duplicate.

    Raises:
        ConfigError: naming the source, the key and both lines.
    """
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return  # the loader that follows reports the syntax error with its position
    stack = [root] if root is not None else []
    seen_nodes: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:  # anchors make the tree a graph
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[object, int] = {}
            for key_node, value_node in node.value:
                stack.append(value_node)
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    stack.append(key_node)
                    continue
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise ConfigError(
                        f"{source}: key {key_node.value!r} is given twice (lines {lines[key]} "
                        f"and {line}); keep one"
                    )
                lines[key] = line
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def install_strict_yaml() -> None:
    """Make jsonargparse's YAML loader refuse duplicate keys, in every file and value it reads.

    Every command's parser (``--config`` files, a nested ``--model FILE``, values on
    the command line) goes through jsonargparse's ``"yaml"`` loader; this wraps the
    loader jsonargparse has (merge keys and its number rules unchanged) with
    :func:`check_yaml_keys`, through jsonargparse's public ``set_loader``.
    Installing it twice changes nothing.
    """
    import yaml
    from jsonargparse import get_loader, set_loader

    current = get_loader("yaml")
    if getattr(current, "_reaf_strict", False):
        return

    def strict(text: str) -> Any:
        try:
            check_yaml_keys(text, "config")
        except ConfigError as err:
            raise yaml.constructor.ConstructorError(problem=str(err)) from None
        return current(text)

    strict._reaf_strict = True  # type: ignore[attr-defined]
    set_loader("yaml", strict, exceptions=(yaml.YAMLError,))


#: The seeds numpy (and so Lightning's ``seed_everything``) accepts: unsigned 32-bit.
SEED_RANGE = (0, 2**32 - 1)


def check_seed(seed: object, option: str = "seed_everything") -> None:
    """Refuse an integer seed numpy cannot take (``true``/``false``/``None`` pass).

    Raises:
        ConfigError: naming the value and the range.
    """
    if isinstance(seed, int) and not isinstance(seed, bool):
        low, high = SEED_RANGE
        if not low <= seed <= high:
            raise ConfigError(
                f"{option} {seed} is outside numpy's seed range [{low}, {high}]; give a seed in it"
            )


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, refusing what would otherwise be misread silently.

    Refused, each with one line naming the file: a missing or unreadable file,
    one that is not a regular file (a FIFO, a device) or is larger than
    :data:`CONFIG_MAX_BYTES`, YAML syntax errors (with line and column), an empty
    file or one whose top level is not a mapping, and a key given twice in the
    same mapping (:func:`check_yaml_keys`; merge keys ``<<:`` are accepted).

    Raises:
        ConfigError: as above.
    """
    import yaml

    file = Path(path)
    raw = read_bounded(file, CONFIG_MAX_BYTES, what="config file", error=ConfigError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"cannot read config file {file}: {one_line(err)}") from err
    try:
        check_yaml_keys(text, str(file))
        content = yaml.safe_load(text)
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
