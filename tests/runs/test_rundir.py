"""The run directory is owned: one process at a time, finished work protected, resumes exact.

Real ``python -m reaf_lightning.training.cli fit`` processes (slow tier) on the tiny
config of :func:`helpers.fit_processes.tiny_config`, stopped at known batches by
:class:`helpers.fit_processes.PauseAt` with real signals (``SIGTERM``, ``SIGKILL``).
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.fit_processes import (
    pause_args,
    start_fit,
    tiny_config,
    wait_for,
    write_config,
)

from reaf_lightning.report.summary import format_unfinished, unfinished_frame
from reaf_lightning.runs.find import find_runs
from reaf_lightning.runs.layout import RunDir
from reaf_lightning.runs.record import read_record

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS, BATCHES = 3, 4


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _messages(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("reaf-lightning:")]


@pytest.mark.slow
def test_sigterm_mid_epoch_and_resume_ends_bit_identical_and_last_is_newest(tmp_path):
    """Point 9 and 5: the run stopped by SIGTERM in its first epoch and resumed ends with the
    weights of the uninterrupted run, bit for bit; last.ckpt is the final state, no last-vN."""
    whole = write_config(tmp_path / "whole.yaml", tiny_config(tmp_path / "whole", EPOCHS, BATCHES))
    code, err = _finish(start_fit(whole))
    assert code == 0, err[-3000:]

    root = tmp_path / "stopped"
    config = write_config(tmp_path / "stopped.yaml", tiny_config(root, EPOCHS, BATCHES))
    ready = tmp_path / "ready"
    proc = start_fit(config, *pause_args(ready, epoch=0, batch=2, until_sigterm=True))
    wait_for(ready, proc)
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    assert code == 143, err[-3000:]
    run = RunDir(root / "seed0")
    preempted = read_record(run.metrics)
    assert not preempted.finished and preempted.epochs.reached == 0
    assert preempted.fit.seen == {}  # no pass over a split has ended yet
    code, err = _finish(start_fit(config, "--ckpt_path", "last"))
    assert code == 0, err[-3000:]
    assert "not resumable" not in err  # Lightning's warning about plain DataLoaders

    assert sorted(p.name for p in run.checkpoints()) == ["best-epoch=000.ckpt", "last.ckpt"] or all(
        not p.name.startswith("last-") for p in run.checkpoints()
    )
    assert not list(run.checkpoint_dir.glob("last-v*"))
    last = torch.load(run.last_checkpoint, map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (EPOCHS - 1, EPOCHS * BATCHES)
    expected = _weights(RunDir(tmp_path / "whole" / "seed0").last_checkpoint)
    got = last["state_dict"]
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert different == []
    record = read_record(run.metrics)
    assert record.finished and (record.epochs.planned, record.epochs.reached) == (EPOCHS, EPOCHS)
    assert last["reaf_run"]["network"]["arch"] == "test_reaf_resnet"
    # what the last epoch fed is counted as in the run never stopped (the resumed half of
    # the first epoch is no whole pass and is not recorded as one)
    whole_record = read_record(RunDir(tmp_path / "whole" / "seed0").metrics)
    assert record.fit.seen == whole_record.fit.seen
    assert record.fit.seen["train"].batches == BATCHES


@pytest.mark.slow
def test_a_second_process_is_refused_and_a_killed_holder_never_blocks_the_resume(tmp_path):
    """Point 4: one process per run directory; the OS drops the lock of a SIGKILLed one."""
    root = tmp_path / "run"
    config = write_config(tmp_path / "tiny.yaml", tiny_config(root, 2, BATCHES))
    ready = tmp_path / "ready"
    first = start_fit(config, *pause_args(ready, epoch=1, batch=1))  # holds until killed
    wait_for(ready, first)
    code, err = _finish(start_fit(config, "--ckpt_path", "last"))
    assert code == 2, err[-3000:]
    (line,) = _messages(err)
    assert f"is in use by process {first.pid} on " in line and str(root / "seed0") in line
    # the first process's files were not touched by the refused one
    holder = json.loads((root / "seed0" / ".lock.holder").read_text())
    assert holder["pid"] == first.pid

    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL
    code, err = _finish(start_fit(config, "--ckpt_path", "last"))
    assert code == 0, err[-3000:]
    record = read_record(root / "seed0" / "metrics.json")
    assert record.finished and record.epochs.reached == 2


@pytest.mark.slow
def test_overwrite_run_replaces_a_run_only_when_asked(tmp_path):
    """Point 3: a second plain fit is refused; --overwrite_run trains anew (and is not saved)."""
    root = tmp_path / "run"
    config = write_config(tmp_path / "tiny.yaml", tiny_config(root, 1, 2))
    code, err = _finish(start_fit(config))
    assert code == 0, err[-3000:]
    run = RunDir(root / "seed0")
    first = run.last_checkpoint.read_bytes()
    code, err = _finish(start_fit(config))
    assert code == 2 and "already holds a run (finished, 1/1 epochs)" in _messages(err)[0]
    assert run.last_checkpoint.read_bytes() == first
    code, err = _finish(start_fit(config, "--overwrite_run", "true", "--model.lr", "0.01"))
    assert code == 0, err[-3000:]
    assert any("--overwrite_run: deleted the run" in line for line in _messages(err))
    assert run.last_checkpoint.read_bytes() != first
    assert read_record(run.metrics).recipe["lr"] == 0.01
    assert "overwrite_run: false" in run.config().read_text()


@pytest.mark.slow
def test_16_mixed_on_a_cpu_records_the_precision_that_ran(tmp_path):
    """Point 10: Lightning runs 16-mixed as bf16-mixed on a CPU; the record says bf16-mixed."""
    root = tmp_path / "run"
    config = write_config(tmp_path / "tiny.yaml", tiny_config(root, 1, 2))
    code, err = _finish(start_fit(config, "--trainer.precision", "16-mixed"))
    assert code == 0, err[-3000:]
    assert read_record(RunDir(root / "seed0").metrics).precision == "bf16-mixed"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> RunDir:
    """The 2-epoch tiny run, never interrupted: what an interrupted one must end as."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    config = write_config(tmp / "whole.yaml", tiny_config(tmp / "whole", 2, BATCHES))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        code, err = _finish(start_fit(config))
    assert code == 0, err[-3000:]
    return RunDir(tmp / "whole" / "seed0")


@pytest.mark.slow
@pytest.mark.parametrize("epoch", [0, 1], ids=["first epoch", "last epoch"])
def test_sigterm_during_validation_is_validated_again_on_resume(tmp_path, uninterrupted, epoch):
    """A SIGTERM between two validation batches: the record says what is missing (and
    reaf-report shows it); the resume runs that validation again, whole, and the run ends
    as the uninterrupted one, metrics, best checkpoint and weights."""
    root = tmp_path / "logs" / "stopped"
    config = write_config(tmp_path / "stopped.yaml", tiny_config(root, 2, BATCHES))
    ready = tmp_path / "ready"
    pause = pause_args(ready, epoch=epoch, batch=0, until_sigterm=True, validation=True)
    proc = start_fit(config, *pause)
    wait_for(ready, proc)
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    assert code == 143, err[-3000:]
    assert "during its validation, which the resume runs again" in _messages(err)[-1]
    run = RunDir(root / "seed0")
    preempted = read_record(run.metrics)
    assert not preempted.finished and "(during its validation)" in preempted.missing
    listed = format_unfinished(unfinished_frame(find_runs([tmp_path / "logs"])[0]))
    assert f"missing: {preempted.missing}" in listed

    code, err = _finish(start_fit(config, "--ckpt_path", "last"))
    assert code == 0, err[-3000:]
    record, expected = read_record(run.metrics), read_record(uninterrupted.metrics)
    assert record.finished and record.missing is None and record.fit == expected.fit
    assert [p.name for p in run.checkpoints()] == [p.name for p in uninterrupted.checkpoints()]
    listed = {entry for entry in record.files if entry.endswith(".ckpt")}
    assert listed == {f"checkpoints/{p.name}" for p in run.checkpoints()}  # older bests unlisted
    got, want = _weights(run.last_checkpoint), _weights(uninterrupted.last_checkpoint)
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
