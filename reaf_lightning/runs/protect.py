"""Finished work is never replaced by accident: what a command may write into a run directory.

Not part of the paper. A ``fit`` into a directory that holds a run must either
resume it (``--ckpt_path``) or say ``--overwrite_run true``, which deletes exactly
the files the run's record lists (:mod:`reaf_lightning.runs.owned`). Every command
first reads the directory's record (one line for one that is not a record) and
refuses to write over, or mix with, files its record does not list. Smoke runs
(``fast_dev_run``, zero epochs or steps) write nothing and may go anywhere.
"""

from __future__ import annotations

import os
from typing import Any

from reaf_lightning.errors import ConfigError
from reaf_lightning.io import check_outputs
from reaf_lightning.runs.layout import RunDir
from reaf_lightning.runs.owned import entry_of, foreign_outputs, remove_owned
from reaf_lightning.runs.record import RecordError, RunRecord, read_record


# -- protection: finished work is never replaced by accident ------------------------------------
def smoke_reason(
    fast_dev_run: bool | int, max_epochs: int | None, max_steps: int | None
) -> str | None:
    """Why a fit with these trainer settings is a smoke run that writes nothing, or ``None``.

    ``fast_dev_run`` and zero epochs or steps only check a config: such runs never write
    the run record, the config, checkpoints or logs, so they may point at a finished run.
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


def holds_work(record: RunRecord) -> bool:
    """Whether a run has something to lose: metrics of any stage, or a checkpoint.

    A record without either is what a fit that stopped before its first checkpoint
    left (a typo in the data path, a refused setting): the same command again
    continues into it instead of being refused.
    """
    stages = (record.fit, record.validate_, record.test)
    checkpoint = any(entry.endswith(".ckpt") for entry in record.files)
    return any(s is not None for s in stages) or checkpoint or record.epochs.reached > 0


def protect_run(
    run: RunDir, subcommand: str, *, overwrite: bool, resuming: bool, smoke: str | None
) -> list[str]:
    """Check a command against the run directory before it writes anything there.

    Args:
        run: the run directory and the command's checkpoint directory.
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        overwrite: ``--overwrite_run``: delete the files the run's record lists first.
        resuming: a ``--ckpt_path`` was given.
        smoke: why the command is a smoke run that writes nothing (``fast_dev_run``, zero
            epochs), or ``None``. Smoke runs may go anywhere.

    Returns:
        Notes for the user (what was deleted, that a smoke run writes nothing).

    Raises:
        ConfigError: a ``metrics.json`` that is not a run record; files in the way that
            the record does not list; a ``fit`` into a run that holds work and nothing says
            what to do with it; ``overwrite`` with another stage, a smoke run or a resume.
        OutputError: an output is a link or not a regular file, or the deletion failed
            (nothing deleted).
    """
    fit = subcommand == "fit"
    if not fit and overwrite:
        raise ConfigError(f"--overwrite_run applies to fit only, not to {subcommand}")
    if smoke:
        if overwrite:
            raise ConfigError(
                f"--overwrite_run with a smoke run ({smoke}) would delete {run.path} for a run "
                "that writes nothing; drop one of them"
            )
        return [f"smoke run ({smoke}): nothing is written into {run.path}"] if fit else []
    if overwrite and resuming:
        raise ConfigError("--overwrite_run starts anew; it cannot be combined with --ckpt_path")
    written = [run.config(subcommand), run.metrics]
    check_outputs([*written, run.predictions] if subcommand == "predict" else written)
    record = _record(run)
    in_the_way = foreign_outputs(run, record, subcommand)
    if in_the_way:
        raise ConfigError(_in_the_way(run, record, subcommand, in_the_way))
    if not fit or record is None:
        return []
    if overwrite:
        count = remove_owned(run, record)
        return [f"--overwrite_run: deleted the run in {run.path} ({count} files/folders it wrote)"]
    if not resuming and holds_work(record):
        raise ConfigError(
            f"{run.path} already holds a run ({_describe(record)}); continue it with --ckpt_path "
            "last, train into another --trainer.default_root_dir, or replace it with "
            "--overwrite_run true"
        )
    return []


def _record(run: RunDir) -> RunRecord | None:
    """The run directory's record; ``None`` without one; one line for one that is not."""
    if not os.path.lexists(run.metrics):
        return None
    try:
        return read_record(run.metrics)
    except RecordError as err:
        raise ConfigError(
            f"{err}; it was not written by reaf-lightning or is damaged, and is left as it is: "
            f"move it out of {run.path}, or give this command another --trainer.default_root_dir"
        ) from None


def _in_the_way(run: RunDir, record: RunRecord | None, stage: str, paths: list[os.PathLike]) -> str:
    names = [entry_of(run.path, p) for p in paths]
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    whose = "its run record does not list" if record is not None else "no run record lists"
    advice = "move them away, or give this command another --trainer.default_root_dir"
    if any(os.fspath(p).endswith(".ckpt") for p in paths):
        advice += " or the run a checkpoint directory of its own (--checkpoint.dirpath)"
    return (
        f"{run.path} holds {shown}, which {whose} (written by another run or program), and "
        f"this {stage} would write over or mix with them; {advice}"
    )


def _describe(record: RunRecord) -> str:
    """``finished, 4/4 epochs`` (``unfinished, 1/4 epochs``) from the run record."""
    state = "finished" if record.finished else "unfinished"
    planned = record.epochs.planned if record.epochs.planned is not None else "?"
    return f"{state}, {record.epochs.reached}/{planned} epochs"
