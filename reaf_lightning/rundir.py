"""The run directory: the one place that names the files a run consists of.

Not part of the paper. A run is ``<root>/seed<N>/`` (``trainer.default_root_dir``
with the seed appended by ``reaf-lightning``)::

    seed0/
      config.yaml            resolved config of the fit (config_<stage>.yaml of later stages)
      checkpoints/           last.ckpt (the newest state, always) and best-epoch=NNN.ckpt
      metrics.json           the run record (reaf_lightning.record)
      predictions.csv        top-k predictions of `predict`
      selectivity.csv        class selectivity logged during training (analysis callback)
      wandb/                 W&B's files of the fit; their run id is the run's W&B id
      wandb_<stage>/         W&B's files of a later stage's own run (validate, test, predict)
      .lock, .lock.holder    held by the one process working on the run, and who that is

Everything else asks this module for these names, so the layout can be read
in one place (and in ``docs/runs.md``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from reaf_lightning.errors import ConfigError
from reaf_lightning.io import atomic_outputs, ensure_writable
from reaf_lightning.record import RecordError, read_record

__all__ = [
    "BEST_FILENAME",
    "CHECKPOINTS",
    "DEFAULT_ROOT",
    "LAST",
    "METRICS",
    "PREDICTIONS",
    "SELECTIVITY",
    "WANDB",
    "RunDir",
    "RunLock",
    "RunDirBusy",
    "is_seed_dir",
    "lock_run_dir",
    "protect_run",
    "run_dir_for_seed",
    "seed_name",
    "smoke_reason",
    "trainer_smoke_reason",
]

DEFAULT_ROOT = "logs"
CHECKPOINTS = "checkpoints"
LAST = "last"  # Lightning's ModelCheckpoint.CHECKPOINT_NAME_LAST, written as last.ckpt
CHECKPOINT_SUFFIX = ".ckpt"
BEST_FILENAME = "best-{epoch:03d}"  # ModelCheckpoint's filename template of the best checkpoint
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
SELECTIVITY = "selectivity.csv"
WANDB = "wandb"
LOCK = ".lock"
LOCK_HOLDER = ".lock.holder"
_SEED_DIR = re.compile(r"seed\d+")


def is_seed_dir(name: str) -> bool:
    """True for a folder name of the ``seed<N>`` form (the seeds of one experiment)."""
    return _SEED_DIR.fullmatch(name) is not None


def seed_name(seed: int) -> str:
    """``seed<N>``: the run directory of one seed, and the suffix of its W&B run name."""
    return f"seed{seed}"


def run_dir_for_seed(root: str | os.PathLike[str], seed: int | None) -> Path:
    """``<root>/seed<N>``; ``root`` itself when it already ends so, or without a seed."""
    path = Path(root)
    if seed is None or path.name == seed_name(seed):
        return path
    return path / seed_name(seed)


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created or read here).

    Args:
        path: the run directory, ``trainer.default_root_dir``.
        checkpoint_dir: where its checkpoints go, when configured elsewhere
            (``checkpoint.dirpath``); default ``<path>/checkpoints``.
    """

    path: Path
    checkpoint_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.checkpoint_dir is None:
            object.__setattr__(self, "checkpoint_dir", self.path / CHECKPOINTS)
        else:
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))

    def config(self, stage: str = "fit") -> Path:
        """``config.yaml`` for ``fit``, ``config_<stage>.yaml`` for the later stages."""
        return self.path / ("config.yaml" if stage == "fit" else f"config_{stage}.yaml")

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / (LAST + CHECKPOINT_SUFFIX)

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def selectivity(self) -> Path:
        return self.path / SELECTIVITY

    @property
    def wandb(self) -> Path:
        return self.path / WANDB

    def wandb_save_dir(self, stage: str = "fit") -> Path:
        """The W&B ``save_dir`` of a stage: the run directory for ``fit`` (``wandb/``, whose
        run id the run keeps), ``wandb_<stage>/`` for a later stage's own W&B run."""
        return self.path if stage == "fit" else self.path / f"{WANDB}_{stage}"

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def lock_holder(self) -> Path:
        return self.path / LOCK_HOLDER

    def checkpoints(self) -> list[Path]:
        """The checkpoint files there now (hidden temporaries of atomic writes excluded)."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = self.checkpoint_dir.glob("*" + CHECKPOINT_SUFFIX)
        return sorted(p for p in found if not p.name.startswith("."))

    def run_files(self) -> list[Path]:
        """The files and folders that make this a run (config, checkpoints, record, outputs)."""
        candidates = [self.config(), self.metrics, self.predictions, self.selectivity, self.wandb]
        for stage in ("validate", "test", "predict"):
            candidates += [self.config(stage), self.wandb_save_dir(stage)]
        return [p for p in candidates if p.exists()] + self.checkpoints()

    def holds_run(self) -> bool:
        """Whether a run was started here: a fit's config, record or checkpoint exists."""
        return self.config().is_file() or self.metrics.is_file() or bool(self.checkpoints())


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


# -- protection: finished work is never replaced by accident ------------------------------------
def smoke_reason(
    fast_dev_run: bool | int, max_epochs: int | None, max_steps: int | None
) -> str | None:
    """Why a fit with these trainer settings is a smoke run that writes nothing, or ``None``.

    ``fast_dev_run`` and zero epochs or steps only check a config: such runs never write
    the run record, the config or checkpoints, so they may point at a finished run.
    """
    if fast_dev_run:
        return "trainer.fast_dev_run"
    if max_epochs == 0:
        return "zero epochs"
    return "zero steps" if max_steps == 0 else None


def trainer_smoke_reason(trainer: Any) -> str | None:
    """:func:`smoke_reason` of a Lightning ``Trainer`` (zero epochs/steps only while fitting)."""
    if trainer.fast_dev_run or trainer.state.fn != "fit":
        return smoke_reason(trainer.fast_dev_run, None, None)
    return smoke_reason(False, trainer.max_epochs, trainer.max_steps)


def protect_run(
    run: RunDir, subcommand: str, *, overwrite: bool, resuming: bool, smoke: str | None
) -> list[str]:
    """Refuse a ``fit`` that would replace a run, unless it resumes it or ``overwrite`` says so.

    Args:
        run: the run directory.
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        overwrite: ``--overwrite_run``: delete the run's files (:meth:`RunDir.run_files`) first.
        resuming: a ``--ckpt_path`` was given.
        smoke: why the command is a smoke run that writes nothing (``fast_dev_run``, zero
            epochs), or ``None``. Smoke runs may go anywhere.

    Returns:
        Notes for the user (what was deleted, that a smoke run writes nothing).

    Raises:
        ConfigError: the directory holds a run and nothing says what to do with it, or
            ``overwrite`` is combined with a stage other than fit, a smoke run or a resume.
    """
    if subcommand != "fit":
        if overwrite:
            raise ConfigError(f"--overwrite_run applies to fit only, not to {subcommand}")
        return []
    if smoke:
        if overwrite:
            raise ConfigError(
                f"--overwrite_run with a smoke run ({smoke}) would delete {run.path} for a run "
                "that writes nothing; drop one of them"
            )
        return [f"smoke run ({smoke}): nothing is written into {run.path}"]
    if overwrite:
        if resuming:
            raise ConfigError("--overwrite_run starts anew; it cannot be combined with --ckpt_path")
        doomed = run.run_files()
        for path in doomed:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return [f"--overwrite_run: deleted the run in {run.path} ({len(doomed)} files/folders)"]
    if not resuming and run.holds_run():
        raise ConfigError(
            f"{run.path} already holds a run ({_describe(run)}); continue it with --ckpt_path "
            "last, train into another --trainer.default_root_dir, or replace it with "
            "--overwrite_run true"
        )
    return []


def _describe(run: RunDir) -> str:
    """``finished, 4/4 epochs`` from the run record, else the files that are there."""
    try:
        record = read_record(run.metrics)
    except RecordError:
        names = [p.name for p in run.run_files()]
        return "holding " + ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    state = "finished" if record.finished else "unfinished"
    planned = record.epochs.planned if record.epochs.planned is not None else "?"
    return f"{state}, {record.epochs.reached}/{planned} epochs"
