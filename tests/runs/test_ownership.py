"""A run owns exactly what it wrote: every command on a run directory that is not as it left it.

In-process ``reaf-lightning`` calls (:func:`helpers.tiny_run.main_lines`) on a copy of the
session's ``trained_run`` (fixture ``finished_run``), with links, shared checkpoint
folders, the user's own files, broken lock files and malformed earlier outputs. Each case
ends in a correct result or in one line naming the value, and then the whole tree
(hidden files, links and their targets) is compared before and after.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers.tiny_run import NO_LOGGER, TINY_ARGS, main_lines, tree

from reaf_lightning.report.summary import format_unfinished, unfinished_frame
from reaf_lightning.runs.find import find_runs
from reaf_lightning.runs.layout import RunDir
from reaf_lightning.runs.owned import claim
from reaf_lightning.runs.record import read_record

CSV = "lightning.pytorch.loggers.CSVLogger"  # writes its logs at once: they would show
SELECTIVITY = [
    "--trainer.callbacks+=reaf_lightning.analysis.training_callback.SelectivityCallback",
    "--trainer.callbacks.init_args.layers=[layer1]",
]


def _args(run_dir: Path, *more: str) -> list[str]:
    """The tiny quick start of ``finished_run`` (one epoch), into ``run_dir``."""
    where = ["--trainer.default_root_dir", str(run_dir), "--trainer.max_epochs", "1"]
    return [*TINY_ARGS, *NO_LOGGER, *where, *more]


def test_overwrite_through_linked_folders_deletes_only_what_the_run_wrote(
    tmp_path, capsys, monkeypatch
):
    # Set up before the first fit: the run directory is a link (to a disk with room), its
    # checkpoints/ a link to scratch; both hold the user's own files too.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = tmp_path / "exp" / "seed0"
    real, scratch = tmp_path / "disk" / "seed0", tmp_path / "scratch" / "seed0"
    for folder in (run_dir.parent, real / "figures", scratch):
        folder.mkdir(parents=True)
    run_dir.symlink_to(real)
    (real / "checkpoints").symlink_to(scratch)
    (scratch / "notes.txt").write_text("the user's")
    (real / "notes.txt").write_text("the user's")
    (real / "figures" / "curve.png").write_bytes(b"png")
    code, lines = main_lines(capsys, "fit", *_args(run_dir))
    assert code == 0, lines
    first = (scratch / "last.ckpt").read_bytes()
    # listed where they are: the checkpoints on scratch by their real path
    listed = [str(scratch / "best-epoch=000.ckpt"), str(scratch / "last.ckpt"), "config.yaml"]
    assert sorted(read_record(real / "metrics.json").files) == sorted(listed)

    code, lines = main_lines(capsys, "fit", *_args(run_dir))
    assert code == 2 and "replace it with --overwrite_run true" in lines[0]
    again = _args(run_dir, "--overwrite_run", "true", "--model.lr", "0.01")
    code, lines = main_lines(capsys, "fit", *again)
    assert code == 0, lines
    deleted = f"deleted the run in {run_dir} (4 files/folders it wrote)"
    assert f"reaf-lightning: --overwrite_run: {deleted}" in lines
    assert sorted(os.listdir(scratch)) == ["best-epoch=000.ckpt", "last.ckpt", "notes.txt"]
    assert (scratch / "last.ckpt").read_bytes() != first  # trained anew, with its own lr
    assert read_record(real / "metrics.json").recipe["lr"] == 0.01
    assert sorted(os.listdir(real)) == [
        "checkpoints",
        "config.yaml",
        "figures",
        "metrics.json",
        "notes.txt",
    ]
    assert run_dir.is_symlink() and (real / "checkpoints").is_symlink()
    assert sorted(read_record(real / "metrics.json").files) == sorted(listed)


def test_a_checkpoint_folder_shared_with_another_run_is_refused_without_deleting_advice(
    finished_run, tmp_path, capsys
):
    shared = RunDir(finished_run).checkpoint_dir
    other = tmp_path / "other" / "seed0"
    before = tree(finished_run)
    for extra in ([], ["--overwrite_run", "true"], ["--ckpt_path", "last"]):
        args = _args(other, "--checkpoint.dirpath", str(shared), *extra)
        code, lines = main_lines(capsys, "fit", *args)
        assert code == 2 and len(lines) == 1, lines
        assert f"{other} holds {shared}/best-epoch=000.ckpt, {shared}/last.ckpt" in lines[0]
        assert "no run record lists" in lines[0] and "--checkpoint.dirpath" in lines[0]
        assert "--overwrite_run" not in lines[0]  # it would not help, and must not be advised
        assert tree(finished_run) == before and not other.exists()


@pytest.mark.parametrize("linked", ["wandb", "metrics.json", "config.yaml"])
def test_a_linked_output_stops_fit_before_anything_is_deleted(
    finished_run, tmp_path, capsys, linked
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (finished_run / linked).rename(elsewhere / linked)
    (finished_run / linked).symlink_to(elsewhere / linked)
    before, outside = tree(finished_run), tree(elsewhere)
    # (a resume may log into a linked wandb/: W&B's files of the run, moved by the user)
    resume = [["--ckpt_path", "last"]] if linked != "wandb" else []
    for extra in [["--overwrite_run", "true"], *resume]:
        code, lines = main_lines(capsys, "fit", *_args(finished_run, *extra))
        assert code == 2 and len(lines) == 1, lines
        assert f"{finished_run / linked} is a symbolic link (to {elsewhere / linked})" in lines[0]
        assert tree(finished_run) == before and tree(elsewhere) == outside


def test_a_failed_overwrite_leaves_the_run_as_it_was(finished_run, capsys, monkeypatch):
    before = tree(finished_run)
    real_rename = os.rename

    def no_last(src, dst, **kwargs):
        if src == "last.ckpt":
            raise PermissionError(13, "Permission denied", src)
        return real_rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", no_last)
    code, lines = main_lines(capsys, "fit", *_args(finished_run, "--overwrite_run", "true"))
    assert code == 2
    assert lines == [
        f"reaf-lightning: error: --overwrite_run: cannot delete {finished_run}/checkpoints/"
        f"last.ckpt (Permission denied); the run in {finished_run} is as it was, nothing was "
        "deleted"
    ]
    assert tree(finished_run) == before


@pytest.mark.parametrize(
    "smoke", [["--trainer.fast_dev_run", "true"], ["--trainer.max_epochs", "0"]], ids=str
)
def test_a_smoke_run_leaves_nothing_in_a_new_or_an_existing_directory(
    finished_run, tmp_path, capsys, smoke
):
    fresh = tmp_path / "new" / "deeper"
    for run_dir in (fresh, finished_run):
        before = tree(tmp_path)
        csv = [f"--trainer.logger={CSV}", f"--trainer.logger.init_args.save_dir={run_dir}"]
        args = [*TINY_ARGS, *csv, "--trainer.default_root_dir", str(run_dir), *smoke]
        code, lines = main_lines(capsys, "fit", *args, "--seed_everything", "false")
        assert code == 0, lines
        assert tree(tmp_path) == before  # no lock files, no checkpoints/, no logs
        assert not fresh.parent.exists()


@pytest.mark.parametrize("kind", ["directory", "link", "FIFO"])
def test_a_broken_lock_file_is_one_line_and_nothing_else_is_written(finished_run, capsys, kind):
    lock = RunDir(finished_run).lock
    if kind == "directory":
        lock.mkdir()
    elif kind == "link":
        lock.symlink_to(finished_run / "config.yaml")
    else:
        os.mkfifo(lock)
    before = tree(finished_run)
    code, lines = main_lines(capsys, "fit", *_args(finished_run, "--ckpt_path", "last"))
    assert code == 2 and len(lines) == 1
    assert f"lock file {lock} is a" in lines[0] and "remove it, then run" in lines[0]
    assert tree(finished_run) == before


def test_malformed_earlier_outputs_are_one_line_and_left_as_they_are(
    finished_run, tmp_path, capsys
):
    run = RunDir(finished_run)
    record_bytes = run.metrics.read_bytes()
    cases = [
        (run.metrics, b'{"format": "reaf-run/1", "seed": 0, "seed": 1}', "'seed' is given twice"),
        (run.metrics, b"{", "is not valid JSON"),
        (run.metrics, b'{"format": "reaf-run/1", "epochs": {"reached": -1}}', "epochs.reached"),
    ]
    for path, content, words in cases:
        path.write_bytes(content)
        before = tree(finished_run)
        code, lines = main_lines(capsys, "fit", *_args(finished_run, "--ckpt_path", "last"))
        assert code == 2 and len(lines) == 1 and words in lines[0], lines
        assert "is left as it is: move it out of" in lines[0]
        assert tree(finished_run) == before
    run.metrics.write_bytes(record_bytes)

    # selectivity.csv the run never wrote: in the way of a new fit, named
    fresh = RunDir(tmp_path / "fresh")
    fresh.path.mkdir()
    fresh.selectivity.write_text("")
    before = tree(fresh.path)
    code, lines = main_lines(capsys, "fit", *_args(fresh.path, "--seed_everything", "false"))
    assert code == 2 and "holds selectivity.csv, which no run record lists" in lines[0]
    assert tree(fresh.path) == before

    # the run's own selectivity.csv, emptied: the resume stops at set-up, before any write
    claim(finished_run, [run.selectivity])
    run.selectivity.write_text("")
    before = tree(finished_run)
    args = _args(finished_run, "--ckpt_path", "last", "--trainer.max_epochs", "2", *SELECTIVITY)
    code, lines = main_lines(capsys, "fit", *args)
    assert code == 2 and len(lines) == 1
    assert f"{run.selectivity} is not a selectivity table of SelectivityCallback" in lines[0]
    assert tree(finished_run) == before

    # predictions.csv of someone else: predict refuses before predicting
    run.predictions.write_text("not ours")
    before = tree(finished_run)
    code, lines = main_lines(capsys, "predict", *_args(finished_run, "--ckpt_path", "last"))
    assert code == 2 and "holds predictions.csv, which its run record does not list" in lines[0]
    assert tree(finished_run) == before


def test_a_fit_that_stopped_before_training_is_retried_by_the_same_command(tmp_path, capsys):
    # The first attempt stops at set-up (a refused selectivity layer) after its CSV logger's
    # folder was listed: the run holds nothing to lose, so the same command goes on into it.
    root = tmp_path / "run"
    csv = [f"--trainer.logger={CSV}", f"--trainer.logger.init_args.save_dir={root / 'seed0'}"]
    base = [*TINY_ARGS, *csv, "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "1"]
    twice = ["--trainer.callbacks.init_args.layers=[layer1.0.relu]"]
    code, lines = main_lines(capsys, "fit", *base, *SELECTIVITY[:1], *twice)
    assert code == 2 and "more than once" in lines[0]
    left = read_record(RunDir(root / "seed0").metrics)
    assert left.files == ["quickstart/version_0"] and left.fit is None
    code, lines = main_lines(capsys, "fit", *base)
    assert code == 0, lines
    record = read_record(RunDir(root / "seed0").metrics)
    assert record.finished and "quickstart/version_1" in record.files


def test_unvalidated_final_weights_are_not_finished_and_the_report_says_why(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    root = tmp_path / "logs" / "exp"
    args = [*TINY_ARGS, *NO_LOGGER, "--trainer.default_root_dir", str(root)]
    code, lines = main_lines(
        capsys, "fit", *args, "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "2"
    )
    assert code == 0, lines
    record = read_record(RunDir(root / "seed0").metrics)
    last = torch.load(RunDir(root / "seed0").last_checkpoint, weights_only=True)
    assert not record.finished and record.fit.final == {}
    assert record.missing == (
        f"no validation of the final weights (global step {last['global_step']}): nothing "
        "validated; reaf-lightning validate --ckpt_path last measures them"
    )
    runs, _, _ = find_runs([tmp_path / "logs"])
    listed = format_unfinished(unfinished_frame(runs))
    assert f"(seed0): 1 of 1 epochs; missing: {record.missing}" in listed
