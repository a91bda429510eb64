"""Finished work is never replaced by accident: which ``fit`` may write into a run directory.

Not part of the paper. A ``fit`` into a directory that holds a run must either
resume it (``--ckpt_path``) or say ``--overwrite_run true``; smoke runs
(``fast_dev_run``, zero epochs or steps) write nothing and may go anywhere.
"""

from __future__ import annotations

import shutil
from typing import Any

from reaf_lightning.errors import ConfigError
from reaf_lightning.runs.layout import RunDir
from reaf_lightning.runs.record import RecordError, read_record


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
