"""A run owns exactly what it wrote (reaf_lightning.runs.owned): listing, and all-or-none removal.

Run directories are built by hand here (files listed in a record as the writers list
them); every check compares the whole tree, links and their targets included, before and
after against what is expected, written out by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.tiny_run import tree

from reaf_lightning.errors import ConfigError, OutputError
from reaf_lightning.runs.layout import RunDir
from reaf_lightning.runs.owned import claim, entry_of, foreign_outputs, remove_owned, unclaim
from reaf_lightning.runs.record import RunRecord, read_record, write_record


def _run(tmp_path: Path) -> RunDir:
    """A trained run as the writers leave it, plus the user's own files beside it."""
    run = RunDir(tmp_path / "exp" / "seed0")
    written = [
        run.config(),
        run.checkpoint_dir / "last.ckpt",
        run.checkpoint_dir / "best-epoch=002.ckpt",
        run.path / "wandb" / "run-1" / "files.txt",
        run.path / "csv" / "version_0" / "metrics.csv",
    ]
    for path in written:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"written by the run: {path.name}")
    claim(run.path, [run.config(), *written[1:3], run.path / "wandb", run.path / "csv/version_0"])
    (run.path / "notes.txt").write_text("the user's")
    (run.checkpoint_dir / "README").write_text("the user's")
    (run.path / "csv" / "version_1").mkdir()  # another run's logs, not listed
    return run


def test_claims_list_paths_relative_to_the_run_and_absolute_outside(tmp_path):
    run = RunDir(tmp_path / "seed0")
    claim(run.path, [run.config(), tmp_path / "scratch" / "last.ckpt"])
    claim(run.path, [run.config()])  # listed once
    record = read_record(run.metrics)
    assert record.files == ["config.yaml", f"{tmp_path}/scratch/last.ckpt"]
    assert not record.finished and record.fit is None  # the record a run starts with
    unclaim(run.path, [tmp_path / "scratch" / "last.ckpt"])
    assert read_record(run.metrics).files == ["config.yaml"]
    assert entry_of(run.path, run.path) == str(run.path)  # the folder itself is never relative


def test_a_metrics_file_of_another_program_is_never_written(tmp_path):
    run = RunDir(tmp_path / "seed0")
    run.path.mkdir()
    run.metrics.write_text('{"accuracy": 0.9}')
    claim(run.path, [run.config()])
    assert run.metrics.read_text() == '{"accuracy": 0.9}'


def test_files_in_the_way_are_those_the_record_does_not_list(tmp_path):
    run = _run(tmp_path)
    record = read_record(run.metrics)
    assert foreign_outputs(run, record, "fit") == []
    (run.checkpoint_dir / "other.ckpt").write_text("another run's")
    run.selectivity.write_text("")
    assert foreign_outputs(run, record, "fit") == [
        run.selectivity,
        run.checkpoint_dir / "other.ckpt",
    ]
    assert foreign_outputs(run, None, "validate") == []
    assert run.config() in foreign_outputs(run, None, "fit")


def test_overwrite_removes_exactly_the_listed_files_and_the_record(tmp_path):
    run = _run(tmp_path)
    before = tree(run.path)
    count = remove_owned(run, read_record(run.metrics))
    gone = {
        "config.yaml",
        "metrics.json",
        "checkpoints/last.ckpt",
        "checkpoints/best-epoch=002.ckpt",
        "wandb",
        "wandb/run-1",
        "wandb/run-1/files.txt",
        "csv/version_0",
        "csv/version_0/metrics.csv",
    }
    assert count == 6  # five listed entries and the record
    assert tree(run.path) == {k: v for k, v in before.items() if k not in gone}
    assert {"notes.txt", "checkpoints/README", "csv/version_1"} <= set(tree(run.path))


def test_a_checkpoint_folder_behind_a_link_loses_only_the_runs_checkpoints(tmp_path):
    # checkpoints/ is a link to scratch space when the run writes: its checkpoints are listed
    # where they are, and only they go; the scratch folder's other files stay.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run = RunDir(tmp_path / "exp" / "seed0")
    run.path.mkdir(parents=True)
    run.checkpoint_dir.symlink_to(scratch)
    (scratch / "mine.txt").write_text("the user's")
    for name in ("last.ckpt", "best-epoch=001.ckpt"):
        claim(run.path, [run.checkpoint_dir / name])
        (run.checkpoint_dir / name).write_text("the run's")
    listed = [f"{scratch}/last.ckpt", f"{scratch}/best-epoch=001.ckpt"]
    assert read_record(run.metrics).files == listed
    remove_owned(run, read_record(run.metrics))
    assert sorted(p.name for p in scratch.iterdir()) == ["mine.txt"]
    assert run.checkpoint_dir.is_symlink() and not run.metrics.exists()


def test_checkpoints_moved_behind_a_link_after_the_run_are_not_followed(tmp_path):
    # The user moved the run's checkpoints/ to scratch and left a link: the listed entries
    # are now reached through a link, so nothing is deleted.
    run = _run(tmp_path)
    scratch = tmp_path / "scratch"
    run.checkpoint_dir.rename(scratch)
    run.checkpoint_dir.symlink_to(scratch)
    before = tree(tmp_path)
    with pytest.raises(ConfigError, match=f"{run.checkpoint_dir} is a symbolic link"):
        remove_owned(run, read_record(run.metrics))
    assert tree(tmp_path) == before


@pytest.mark.parametrize("linked", ["wandb", "config.yaml", "checkpoints/last.ckpt", "csv"])
def test_a_listed_entry_that_is_a_link_stops_everything(tmp_path, linked):
    run = _run(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("not the run's")
    target = run.path / linked
    os.rename(target, elsewhere / "moved")
    target.symlink_to(elsewhere)
    before, outside = tree(run.path), tree(elsewhere)
    with pytest.raises(ConfigError) as err:
        remove_owned(run, read_record(run.metrics))
    assert f"{target} is a symbolic link (to {elsewhere})" in str(err.value)
    assert "nothing was deleted" in str(err.value) and "\n" not in str(err.value)
    assert tree(run.path) == before and tree(elsewhere) == outside


def test_an_entry_outside_the_runs_folders_is_refused(tmp_path):
    run = _run(tmp_path)
    record = read_record(run.metrics)
    outside = tmp_path / "other" / "last.ckpt"
    outside.parent.mkdir()
    outside.write_text("someone's")
    crafted = record.model_copy(update={"files": [*record.files, str(outside)]})
    write_record(run.metrics, crafted)
    before = tree(tmp_path)
    with pytest.raises(ConfigError, match="is neither in the run directory"):
        remove_owned(run, crafted)
    assert tree(tmp_path) == before
    # the same entry is the run's own when the command names that checkpoint directory
    elsewhere = RunDir(run.path, outside.parent)
    remove_owned(elsewhere, crafted)
    assert not outside.exists() and not run.metrics.exists()


def test_a_failed_rename_puts_everything_back(tmp_path, monkeypatch):
    # A permission error on the fourth entry (as on a read-only folder): the three moved
    # before it go back, no hidden folder stays, the run is as it was.
    run = _run(tmp_path)
    before = tree(tmp_path)
    real_rename, calls = os.rename, []

    def failing(src, dst, **kwargs):
        calls.append(src)
        if len(calls) == 4:
            raise PermissionError(13, "Permission denied", src)
        return real_rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OutputError) as err:
        remove_owned(run, read_record(run.metrics))
    monkeypatch.setattr(os, "rename", real_rename)
    assert "Permission denied" in str(err.value) and "nothing was deleted" in str(err.value)
    assert tree(tmp_path) == before


def test_entries_already_gone_and_other_kinds(tmp_path):
    run = _run(tmp_path)
    (run.checkpoint_dir / "best-epoch=002.ckpt").unlink()  # listed, removed by hand
    remove_owned(run, read_record(run.metrics))
    assert not run.metrics.exists() and not run.config().exists()

    run = _run(tmp_path / "again")
    run.config().unlink()
    os.mkfifo(run.config())
    before = tree(run.path)
    with pytest.raises(ConfigError, match="is a FIFO"):
        remove_owned(run, read_record(run.metrics))
    assert tree(run.path) == before


def test_a_record_lists_only_plain_paths(tmp_path):
    for bad in ["../x", "a/../../b", "", "a//b", "/", "./a"]:
        with pytest.raises(ValueError, match="not a plain path"):
            RunRecord(files=[bad])
