"""One process per run directory: an OS file lock on ``<run>/.lock`` (not part of the paper).

Two processes writing one run would interleave checkpoints and records; the
lock makes the second one stop at once with one line naming the holder.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from reaf_lightning.errors import ConfigError
from reaf_lightning.io import atomic_outputs, ensure_writable
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
        created: the outermost directory that taking the lock had to create
            (``None``: the run directory existed already).
    """

    file_lock: FileLock
    run: RunDir
    created: Path | None

    def release(self) -> None:
        """Release the lock; a command that created the run directory and then wrote
        nothing into it (a configuration refused before any work) leaves no trace."""
        lock_files = {self.run.lock.name, self.run.lock_holder.name}
        untouched = False
        if self.created is not None:
            try:
                untouched = {p.name for p in self.run.path.iterdir()} <= lock_files
                if untouched:  # removed while still held: no other process can take it now
                    self.run.lock_holder.unlink(missing_ok=True)
                    self.run.lock.unlink(missing_ok=True)
            except OSError:
                untouched = False
        self.file_lock.release()
        if untouched:
            path = self.run.path
            while True:
                try:
                    path.rmdir()  # only ever an empty directory this command made
                except OSError:
                    break
                if path == self.created:
                    break
                path = path.parent


def _first_missing(path: Path) -> Path | None:
    """The outermost ancestor of ``path`` (or ``path`` itself) that does not exist yet."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def lock_run_dir(run: RunDir, command: str) -> RunLock:
    """Take the run directory's lock for this process, or refuse naming the holder.

    The lock is an OS file lock (``flock`` through filelock) on ``.lock``: the
    operating system drops it when its process ends in any way, ``SIGKILL``
    included, so a killed run never blocks the resume that follows. Who holds
    it (pid, host, command, start time) is written to ``.lock.holder`` for the
    refusal message; that file is only information, never the lock itself.

    Raises:
        RunDirBusy: the lock is held by another process (or another command of this one).
        OutputError: the run directory cannot be created or written.
    """
    created = _first_missing(run.path)
    ensure_writable(run.path, "run directory")  # a file in the way, read-only: one line
    lock = FileLock(run.lock, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirBusy(
            f"run directory {run.path} is in use by {_holder(run)}; wait for it to end or stop "
            "it, or give this command another --trainer.default_root_dir"
        ) from None
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    with atomic_outputs([run.lock_holder]) as (temp,):
        temp.write_text(json.dumps(holder) + "\n", encoding="utf-8")
    return RunLock(lock, run, created)


def _holder(run: RunDir) -> str:
    """``process <pid> on <host> (<command>, since <time>)``, as far as the side file says."""
    try:
        with open(run.lock_holder, encoding="utf-8") as handle:
            info = json.loads(handle.read(4096))
        return (
            f"process {int(info['pid'])} on {str(info['host'])[:100]} "
            f"({str(info['command'])[:200]}, since {str(info['since'])[:40]})"
        )
    except (OSError, ValueError, TypeError, KeyError):
        return "another process (its pid is not recorded yet)"
