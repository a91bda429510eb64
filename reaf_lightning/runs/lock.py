"""One process per run directory: an OS file lock on ``<run>/.lock`` (not part of the paper).

Two processes writing one run would interleave checkpoints and records; the
lock makes the second one stop at once with one line naming the holder. The lock
files (``.lock``, ``.lock.holder``) last as long as the command: it removes them when
it ends, together with every empty folder it created, so a command that wrote
nothing leaves nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from reaf_lightning.errors import ConfigError, OutputError, ReafError
from reaf_lightning.io import atomic_outputs, ensure_writable, file_kind, read_bounded
from reaf_lightning.runs.layout import RunDir


# -- ownership: one process per run directory --------------------------------------------------
class RunDirBusy(ConfigError):
    """Another process holds the run directory (exit status 2)."""


@dataclass
class RunLock:
    """The run directory's lock, held by this process until :meth:`release`.

    Attributes:
        file_lock: the OS file lock on ``.lock``.
        run: the run directory it guards.
        created: ``(outermost, innermost)`` pairs of the folders this command created
            (:meth:`creating`), removed again by :meth:`release` where they are empty.
        holder_written: ``.lock.holder`` is this command's (else it is left alone).
    """

    file_lock: FileLock
    run: RunDir
    created: list[tuple[Path, Path]] = field(default_factory=list)
    holder_written: bool = False

    def creating(self, directory: str | os.PathLike[str]) -> None:
        """Note that this command is about to create ``directory`` (and missing parents)."""
        outermost = _first_missing(Path(directory))
        if outermost is not None:
            self.created.append((outermost, Path(directory)))

    def release(self) -> None:
        """Remove the lock files (while still held, so no other process takes them half-way),
        release the lock, then remove the empty folders this command created."""
        if self.file_lock.is_locked:
            mine = [self.run.lock_holder] if self.holder_written else []
            for path in [*mine, self.run.lock]:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            self.file_lock.release()
        for outermost, innermost in reversed(self.created):
            path = innermost
            while True:
                try:
                    path.rmdir()  # only ever an empty folder this command made
                except OSError:
                    break
                if path == outermost:
                    break
                path = path.parent


def _first_missing(path: Path) -> Path | None:
    """The outermost ancestor of ``path`` (or ``path`` itself) that does not exist yet."""
    missing = None
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            break
        missing = candidate
    return missing


def _check_lock_file(run: RunDir) -> None:
    """A ``.lock`` that is not a regular file (a link, a folder, a FIFO) is not one of ours."""
    try:
        info = os.lstat(run.lock)
    except FileNotFoundError:
        return
    if stat.S_ISREG(info.st_mode):
        return
    kind = file_kind(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        kind += f" (to {os.readlink(run.lock)})"
    raise OutputError(
        f"lock file {run.lock} is {kind}, not a lock file of reaf-lightning (a plain empty file "
        "that each command creates and removes); remove it, then run the command again"
    )


def lock_run_dir(run: RunDir, command: str) -> RunLock:
    """Take the run directory's lock for this process, or refuse naming the holder.

    The lock is an OS file lock (``flock`` through filelock) on ``.lock``: the
    operating system drops it when its process ends in any way, ``SIGKILL``
    included, so a killed run never blocks the resume that follows (its lock files
    stay until the next command removes them). Who holds it (pid, host, command,
    start time) is written to ``.lock.holder`` for the refusal message; that file is
    only information, never the lock itself.

    Raises:
        RunDirBusy: the lock is held by another process (or another command of this one).
        OutputError: the run directory cannot be created or written, or ``.lock`` is not
            a regular file or cannot be opened.
    """
    created = _first_missing(run.path)
    ensure_writable(run.path, "run directory")  # a file in the way, read-only: one line
    held = RunLock(FileLock(run.lock, timeout=0, thread_local=False), run)
    if created is not None:
        held.created.append((created, run.path))
    _check_lock_file(run)
    for attempt in range(3):  # the holder may be removing its lock files just now
        try:
            held.file_lock.acquire()
            break
        except Timeout:
            if attempt == 2:
                held.release()
                raise RunDirBusy(
                    f"run directory {run.path} is in use by {_holder(run)}; wait for it to end "
                    "or stop it, or give this command another --trainer.default_root_dir"
                ) from None
            time.sleep(0.1)
        except OSError as err:
            held.release()
            raise OutputError(
                f"cannot take the lock file {run.lock}: {err.strerror or err}; a lock file holds "
                "nothing: remove it (or make it writable), then run the command again"
            ) from None
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    try:
        with atomic_outputs([run.lock_holder]) as (temp,):
            temp.write_text(json.dumps(holder) + "\n", encoding="utf-8")
    except BaseException:
        held.release()
        raise
    held.holder_written = True
    return held


def _holder(run: RunDir) -> str:
    """``process <pid> on <host> (<command>, since <time>)``, as far as the side file says."""
    try:
        info = json.loads(read_bounded(run.lock_holder, 4096, "lock holder"))
        return (
            f"process {int(info['pid'])} on {str(info['host'])[:100]} "
            f"({str(info['command'])[:200]}, since {str(info['since'])[:40]})"
        )
    except (ReafError, ValueError, TypeError, KeyError):
        return "another process (its pid is not recorded yet)"
