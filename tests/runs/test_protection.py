"""A finished run is never overwritten, and a command's problems are found before the work.

In-process ``reaf-lightning`` calls (:func:`reaf_lightning.training.cli.main`, exit status as
a shell sees it) on a copy of the session's ``trained_run``; files are compared byte
for byte before and after.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from helpers.tiny_run import NO_LOGGER, TINY_ARGS, main_lines, tree

from reaf_lightning.errors import OutputError
from reaf_lightning.io import check_outputs
from reaf_lightning.runs.layout import RunDir, run_dir_for_seed
from reaf_lightning.runs.lock import RunDirBusy, lock_run_dir
from reaf_lightning.runs.owned import claim
from reaf_lightning.runs.record import read_record

_main = main_lines


def _snapshot(run_dir: Path) -> dict[str, str]:
    """Every entry of the run directory, hidden ones (the lock files) included."""
    return tree(run_dir)


def test_the_layout_is_spelled_once():
    run = RunDir(Path("logs/x/seed3"))
    assert run_dir_for_seed("logs/x", 3) == run.path == run_dir_for_seed("logs/x/seed3", 3)
    assert run.last_checkpoint == Path("logs/x/seed3/checkpoints/last.ckpt")
    assert (run.metrics.name, run.config().name, run.config("test").name) == (
        "metrics.json",
        "config.yaml",
        "config_test.yaml",
    )
    assert run.wandb_save_dir("fit") == run.path != run.wandb_save_dir("validate")


def test_fit_into_a_finished_run_is_refused_naming_it(finished_run, capsys):
    before = _snapshot(finished_run)
    args = [*TINY_ARGS, *NO_LOGGER, "--trainer.default_root_dir", str(finished_run)]
    code, lines = _main(capsys, "fit", *args)
    assert code == 2
    assert lines == [
        f"reaf-lightning: error: {finished_run} already holds a run (finished, 1/1 epochs); "
        "continue it with --ckpt_path last, train into another --trainer.default_root_dir, or "
        "replace it with --overwrite_run true"
    ]
    assert _snapshot(finished_run) == before


@pytest.mark.parametrize(
    "smoke", [["--trainer.fast_dev_run", "true"], ["--trainer.max_epochs", "0"]], ids=str
)
def test_smoke_and_zero_epoch_runs_leave_a_run_untouched(finished_run, capsys, smoke):
    before = _snapshot(finished_run)
    args = [*TINY_ARGS, *NO_LOGGER, "--trainer.default_root_dir", str(finished_run), *smoke]
    code, lines = _main(capsys, "fit", *args)
    assert code == 0, lines
    assert any("smoke run" in line and "nothing is written" in line for line in lines)
    assert _snapshot(finished_run) == before  # record, config and checkpoints as they were
    assert not list((finished_run / "checkpoints").glob("last-v*"))


def test_the_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    run = RunDir(tmp_path / "seed0")
    lock = lock_run_dir(run, "reaf-lightning fit --config a.yaml")
    try:
        with pytest.raises(RunDirBusy) as err:
            lock_run_dir(run, "reaf-lightning fit --config b.yaml")
        message = str(err.value)
        assert f"in use by process {os.getpid()} on " in message
        assert "reaf-lightning fit --config a.yaml" in message and str(run.path) in message
        assert sorted(os.listdir(run.path)) == [".lock", ".lock.holder"]  # the refused one
    finally:  # removed nothing of the holder's
        lock.release()
    assert not tmp_path.joinpath("seed0").exists()  # lock files gone, the folder it made too
    lock_run_dir(run, "again").release()  # released: the next command takes it


def test_a_killed_holders_lock_files_are_taken_over_and_removed(tmp_path):
    run = RunDir(tmp_path / "seed0")
    run.path.mkdir()
    (run.path / "notes.txt").write_text("the user's")
    run.lock.write_text("")  # as a process killed with SIGKILL leaves them
    run.lock_holder.write_text('{"pid": 1}')
    lock = lock_run_dir(run, "next")
    assert f'"pid": {os.getpid()}' in run.lock_holder.read_text()
    lock.release()
    assert sorted(os.listdir(run.path)) == ["notes.txt"]


def _lock_as_unprivileged_user(run: RunDir) -> str:
    """What taking ``run``'s lock gives a user who is not root (root opens every file): in a
    child process as ``nobody`` when this one is root."""

    def attempt() -> str:
        try:
            lock_run_dir(run, "x").release()
            return "acquired"
        except Exception as err:  # noqa: BLE001 - the outcome is the result
            return f"{type(err).__name__}: {err}"

    if os.geteuid() != 0:
        return attempt()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, attempt().encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as handle:
        return handle.read().decode()


def test_a_lock_file_this_user_cannot_open_is_one_line():
    base = Path(tempfile.mkdtemp(dir="/tmp"))  # reachable by nobody, unlike pytest's tmp_path
    try:
        run = RunDir(base / "seed0")
        run.path.mkdir()
        for folder in (base, run.path):
            os.chmod(folder, 0o777)
        run.lock.write_text("")
        os.chmod(run.lock, 0)
        assert _lock_as_unprivileged_user(run) == (
            f"OutputError: cannot take the lock file {run.lock}: Permission denied; a lock file "
            "holds nothing: remove it (or make it writable), then run the command again"
        )
        assert os.listdir(run.path) == [".lock"]  # left as it was
    finally:
        shutil.rmtree(base)


def test_an_output_path_that_is_a_directory_is_found_before_training(tmp_path, capsys):
    run = RunDir(tmp_path / "fresh" / "seed0")
    run.metrics.mkdir(parents=True)
    args = [*TINY_ARGS, *NO_LOGGER, "--trainer.default_root_dir", str(run.path)]
    code, lines = _main(capsys, "fit", *args)
    with pytest.raises(OutputError) as rule:  # the output rules' own words, independently
        check_outputs([run.metrics])
    assert code == 2
    assert lines == [f"reaf-lightning: error: {rule.value}"] and "is a directory" in lines[0]
    assert run.checkpoints() == []  # no training happened


def test_predict_with_zero_batches_says_so_and_leaves_no_new_file(finished_run, capsys):
    stale = RunDir(finished_run).predictions
    claim(finished_run, [stale])  # as an earlier predict of the run listed it
    stale.write_text("index,path,target\n0,old.png,1\n")
    ckpt = RunDir(finished_run).last_checkpoint
    args = [*TINY_ARGS, *NO_LOGGER, "--trainer.default_root_dir", str(finished_run)]
    code, lines = _main(
        capsys, "predict", *args, "--ckpt_path", str(ckpt), "--trainer.limit_predict_batches", "0"
    )
    assert code == 2
    assert len(lines) == 1 and "limit_predict_batches=0 predicts nothing" in lines[0]
    assert f"{stale} is from an earlier predict" in lines[0]
    assert stale.read_text() == "index,path,target\n0,old.png,1\n"


def test_validate_of_a_checkpoint_with_non_finite_weights_exits_3(finished_run, capsys):
    content = torch.load(RunDir(finished_run).last_checkpoint, weights_only=True)
    name = next(k for k, v in content["state_dict"].items() if v.is_floating_point())
    content["state_dict"][name].view(-1)[0] = float("nan")
    bad = finished_run.parent / "nan.ckpt"
    torch.save(content, bad)
    args = [*TINY_ARGS, *NO_LOGGER, "--trainer.default_root_dir", str(finished_run)]
    code, lines = _main(capsys, "validate", *args, "--ckpt_path", str(bad))
    assert code == 3
    assert len(lines) == 1 and f"{bad} holds non-finite values" in lines[0] and name in lines[0]


def test_a_selectivity_layer_that_runs_twice_is_refused_at_set_up(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("REAF_DEBUG", raising=False)
    run = RunDir(tmp_path / "fresh" / "seed0")
    args = [*TINY_ARGS, *NO_LOGGER, "--trainer.default_root_dir", str(run.path)]
    callback = [
        "--trainer.callbacks+=reaf_lightning.analysis.training_callback.SelectivityCallback",
        "--trainer.callbacks.init_args.layers=[layer1.0.relu]",
    ]
    code, lines = _main(capsys, "fit", *args, *callback)
    assert code == 2
    assert len(lines) == 1 and "'layer1.0.relu'" in lines[0] and "more than once" in lines[0]
    assert run.checkpoints() == [] and not run.metrics.exists()


def test_the_record_of_the_trained_run(trained_run):
    record = read_record(RunDir(trained_run).metrics)
    assert record.finished and (record.epochs.planned, record.epochs.reached) == (1, 1)
    assert record.seed == 0 and record.precision == "32-true"
    assert record.network.arch == "test_reaf_resnet" and record.network.num_classes == 10
    assert record.data.class_path == "reaf_lightning.data.digits.DigitsDataModule"
    assert record.data.init_args["batch_size"] == 16
    assert record.recipe["schedule"] == "cosine" and record.recipe["global_batch"] == 16
    assert record.provenance.package_version and record.fit.final["val/acc1"] is not None
    saved = torch.load(RunDir(trained_run).last_checkpoint, weights_only=True)["reaf_run"]
    assert saved["network"] == record.to_json_dict()["network"]


def test_validate_adds_its_own_key_and_keeps_the_fit(finished_run, capsys):
    run = RunDir(finished_run)
    before, config = read_record(run.metrics), run.config().read_bytes()
    args = [*TINY_ARGS, *NO_LOGGER, "--trainer.default_root_dir", str(finished_run)]
    code, lines = _main(capsys, "validate", *args, "--ckpt_path", "last")
    assert code == 0, lines
    after = read_record(run.metrics)
    assert after.fit == before.fit and after.finished and after.epochs == before.epochs
    assert after.validate_.final["val/acc1"] == pytest.approx(before.fit.final["val/acc1"])
    assert run.config().read_bytes() == config and run.config("validate").is_file()

    run.metrics.write_text('{"seed": 0, "arch": "older format"}')  # not a reaf-run/1 record
    before = _snapshot(finished_run)
    code, lines = _main(capsys, "validate", *args, "--ckpt_path", "last")
    assert code == 2
    assert len(lines) == 1 and f"{run.metrics}: not a reaf-run/1 run record: arch" in lines[0]
    assert f"is left as it is: move it out of {finished_run}" in lines[0]
    assert _snapshot(finished_run) == before  # nothing written, the file left as it was


def test_a_file_where_the_run_directory_belongs_is_one_line(tmp_path, capsys):
    (tmp_path / "seed0").write_text("not a directory")
    args = [*TINY_ARGS, *NO_LOGGER, "--trainer.default_root_dir", str(tmp_path / "seed0")]
    code, lines = _main(capsys, "fit", *args)
    assert code == 2
    assert lines == [
        f"reaf-lightning: error: run directory {tmp_path / 'seed0'} cannot be created: "
        "a file is in the way"
    ]


def test_resuming_a_finished_run_says_that_nothing_was_trained(finished_run, capsys):
    # The one-epoch run resumed with its own max_epochs: Lightning restores it and stops.
    # The non-finite-loss policy is not restored from a checkpoint, so it may change.
    run = RunDir(finished_run)
    last = run.last_checkpoint
    weights = torch.load(last, weights_only=True)["state_dict"]
    args = [*TINY_ARGS, *NO_LOGGER, "--trainer.default_root_dir", str(finished_run)]
    code, lines = _main(
        capsys,
        "fit",
        *args,
        "--trainer.max_epochs",
        "1",
        "--non_finite.policy",
        "skip",
        "--ckpt_path",
        "last",
    )
    assert code == 0
    assert lines == [
        f"reaf-lightning: --ckpt_path last ({last}) had already reached the end of training "
        "(global step 3; trainer.max_epochs=1, trainer.max_steps=-1), so nothing was trained; "
        "raise trainer.max_epochs or trainer.max_steps to train on"
    ]
    after = torch.load(last, weights_only=True)
    assert after["global_step"] == 3
    assert all(torch.equal(after["state_dict"][k], v) for k, v in weights.items())


def test_an_unseeded_run_records_no_seed(tmp_path, capsys, monkeypatch):
    # The record's seed is the configured one, not a PL_GLOBAL_SEED left in the environment
    # (by an earlier seeded run in the same process, or the shell).
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    root = tmp_path / "unseeded"
    args = [*TINY_ARGS, *NO_LOGGER, "--trainer.default_root_dir", str(root)]
    code, lines = _main(
        capsys, "fit", *args, "--trainer.max_epochs", "1", "--seed_everything", "false"
    )
    assert code == 0, lines
    assert read_record(RunDir(root).metrics).seed is None
