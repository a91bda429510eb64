"""Interrupted runs resume, and checkpoints are never half-written.

The interruption tests run ``python -m reaf_lightning.training.cli fit`` as real
processes (slow tier) on a tiny config (3 epochs x 4 batches of digits) with a
:class:`helpers.fit_processes.PauseAt` callback that holds the run at a known
batch, so the signal always arrives at the same point (no timing).
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.fit_processes import (
    fit_process_env,
    pause_args,
    start_fit,
    tiny_config,
    wait_for,
    write_config,
)
from helpers.tiny_run import TINY_ARGS
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from reaf_lightning import ImageClassifier
from reaf_lightning.errors import CheckpointError, OutputError
from reaf_lightning.runs.checkpoint import (
    check_checkpoint,
    read_lightning_checkpoint,
    read_network,
)
from reaf_lightning.runs.record import RecordError, RunRecord
from reaf_lightning.training.cli import run
from reaf_lightning.training.saving import AtomicCheckpointIO

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS, BATCHES = 3, 4  # the tiny run: 3 epochs of 4 optimizer steps


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, out, err


def _logged_steps(csv_dir: Path) -> list[tuple[int, int]]:
    """(epoch, step) of every row Lightning's CSVLogger wrote in one ``version_N`` folder."""
    with open(csv_dir / "metrics.csv") as f:
        return [(int(r["epoch"]), int(r["step"])) for r in csv.DictReader(f) if r["epoch"]]


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _no_temporaries(directory: Path) -> None:
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith(".")) == []


# --- 4. interrupted runs ------------------------------------------------------------------------


@pytest.mark.slow
def test_preempted_then_killed_then_resumed_finishes_the_same_epochs(tmp_path):
    """SIGTERM mid-epoch saves last.ckpt (exit 143); SIGKILL loses only the unsaved steps.

    One run, three processes: (1) SIGTERM at batch 2 of epoch 1; (2) resumed
    with ``--ckpt_path last``, SIGKILLed at batch 1 of epoch 2; (3) resumed
    again, it ends after exactly ``EPOCHS`` epochs and ``EPOCHS * BATCHES`` steps.
    """
    root = tmp_path / "run"
    config = write_config(tmp_path / "tiny.yaml", tiny_config(root, EPOCHS, BATCHES))
    last = root / "seed0" / "checkpoints" / "last.ckpt"  # the run directory of seed 0

    # (1) SIGTERM: Lightning finishes the batch in progress (batches 0-2 of epoch 1 done)
    ready = tmp_path / "ready1"
    proc = start_fit(config, *pause_args(ready, epoch=1, batch=2, until_sigterm=True))
    wait_for(ready, proc)
    proc.send_signal(signal.SIGTERM)
    code, out, err = _finish(proc)
    step = BATCHES + 3
    assert code == 143, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("reaf-lightning:")]
    assert lines == [
        f"reaf-lightning: preempted by SIGTERM at epoch 1, global step {step}; "
        f"saved {last}; resume with --ckpt_path last"
    ]
    assert (_ckpt(last)["epoch"], _ckpt(last)["global_step"]) == (1, step)
    assert read_lightning_checkpoint(last, weights_only=True)["optimizer_states"]  # resumable

    # (2) resume, then SIGKILL in epoch 2: only the end-of-epoch-1 checkpoint survives
    ready = tmp_path / "ready2"
    proc = start_fit(config, "--ckpt_path", "last", *pause_args(ready, epoch=2, batch=1))
    wait_for(ready, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert (_ckpt(last)["epoch"], _ckpt(last)["global_step"]) == (1, 2 * BATCHES)

    # (3) resume again and finish
    code, out, err = _finish(start_fit(config, "--ckpt_path", "last"))
    assert code == 0, err[-3000:]
    final = _ckpt(last)
    assert (final["epoch"], final["global_step"]) == (EPOCHS - 1, EPOCHS * BATCHES)

    # Each process continued from the checkpoint instead of starting over
    # (CSVLogger writes one version_N folder per process).
    first, second, third = (_logged_steps(d) for d in sorted((root / "csv").iterdir()))
    assert min(first) == (0, 0) and max(s for _, s in first) < step
    assert min(s for _, s in second) == step and {e for e, _ in second} == {1, 2}
    assert min(s for _, s in third) == 2 * BATCHES and {e for e, _ in third} == {2}
    _no_temporaries(root / "seed0" / "checkpoints")


@pytest.mark.slow
def test_ctrl_c_exits_130_and_says_where_the_last_checkpoint_is(tmp_path):
    root = tmp_path / "run"
    config = write_config(tmp_path / "tiny.yaml", tiny_config(root, EPOCHS, BATCHES))
    last = root / "seed0" / "checkpoints" / "last.ckpt"
    ready = tmp_path / "ready"
    proc = start_fit(config, *pause_args(ready, epoch=1, batch=1))
    wait_for(ready, proc)
    proc.send_signal(signal.SIGINT)
    code, out, err = _finish(proc)
    assert code == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("reaf-lightning:")]
    assert lines == [
        f"reaf-lightning: interrupted (Ctrl-C); the last checkpoint is {last}; "
        "resume with --ckpt_path last"
    ]
    assert "Traceback" not in err
    assert _ckpt(last)["global_step"] == BATCHES  # the end of epoch 0, intact


@pytest.mark.slow
def test_last_ckpt_follows_every_epoch_even_without_improvement(tmp_path, monkeypatch):
    # Lightning 2.6's ModelCheckpoint writes last.ckpt only together with a top-k file; with
    # a monitor that only "improves" at epoch 0, last.ckpt would stay at epoch 0.
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "run"
    config = write_config(tmp_path / "tiny.yaml", tiny_config(root, EPOCHS, BATCHES))
    cli = run(
        [
            "fit",
            "--config",
            str(config),
            "--checkpoint.monitor",
            "epoch",
            "--checkpoint.mode",
            "min",
            "--checkpoint.filename",
            "best-{epoch}",
        ]
    )
    files = sorted(p.name for p in (root / "seed0" / "checkpoints").iterdir())
    assert files == ["best-epoch=0.ckpt", "last.ckpt"]
    last = _ckpt(root / "seed0" / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (EPOCHS - 1, EPOCHS * BATCHES)
    for name, value in cli.model.state_dict().items():  # the final weights, not epoch 0's
        assert torch.equal(last["state_dict"][name], value), name


# --- 6. atomic checkpoint files -----------------------------------------------------------------


def _state(value: float) -> dict:
    return {"state_dict": {"w": torch.full((1000,), value)}, "epoch": int(value)}


def test_atomic_save_round_trip(tmp_path):
    path = tmp_path / "ckpts" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_state(1.0), path)
    io.save_checkpoint(_state(2.0), path)
    loaded = io.load_checkpoint(path)
    assert loaded["epoch"] == 2 and torch.equal(loaded["state_dict"]["w"], torch.full((1000,), 2.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_state(1.0), path)
    before = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):  # a disk that fills up half-way
        Path(f).write_bytes(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OutputError, match=f"cannot write {path}: no space left on device"):
        io.save_checkpoint(_state(2.0), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file anywhere


def test_temp_dir_on_another_file_system(tmp_path, monkeypatch):
    """Why the plugin exists: Lightning's default copies across file systems into the final name.

    Simulated: renames out of the temp dir fail with EXDEV (as from a local
    ``/tmp`` to NFS), and the copy that ``shutil.move`` falls back to fails half-way.
    """
    default_path = tmp_path / "default" / "last.ckpt"
    atomic_path = tmp_path / "atomic" / "last.ckpt"
    TorchCheckpointIO().save_checkpoint(_state(1.0), default_path)
    AtomicCheckpointIO().save_checkpoint(_state(1.0), atomic_path)
    good = default_path.read_bytes()

    def rename(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def copyfileobj(fsrc, fdst, length=0):
        fdst.write(fsrc.read(100))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "copyfileobj", copyfileobj)
    monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", False)
    with pytest.raises(OSError):
        TorchCheckpointIO().save_checkpoint(_state(2.0), default_path)
    assert len(default_path.read_bytes()) == 100 < len(good)  # the good checkpoint is gone

    AtomicCheckpointIO().save_checkpoint(_state(2.0), atomic_path)  # same dir: no copy at all
    assert torch.equal(_ckpt(atomic_path)["state_dict"]["w"], torch.full((1000,), 2.0))


_KILLED_WRITER = """
import sys, time, torch
from reaf_lightning.training.saving import AtomicCheckpointIO
path, ready = sys.argv[1], sys.argv[2]
def stuck_save(obj, f, *args, **kwargs):
    with open(f, "wb") as handle:
        handle.write(b"x" * 1000)
    open(ready, "w").close()
    time.sleep(300)
torch.save = stuck_save
AtomicCheckpointIO().save_checkpoint({"epoch": 2}, path)
"""


@pytest.mark.slow
def test_sigkill_mid_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_state(1.0), path)
    before = path.read_bytes()
    ready = tmp_path / "writing"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path), str(ready)],
        env=fit_process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(ready, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    ready.unlink()
    assert path.read_bytes() == before
    (stale,) = [p for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert stale.name.startswith(".last.") and stale.name.endswith(f".{proc.pid}.tmp.ckpt")
    # the next save of the same checkpoint removes the dead process's temporary file
    AtomicCheckpointIO().save_checkpoint(_state(3.0), path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert _ckpt(path)["epoch"] == 3


def test_analysis_outputs_are_all_or_nothing(tmp_path, monkeypatch):
    """A crash while ``reaf-analysis`` writes its last table leaves the previous results."""
    import pandas as pd

    from reaf_lightning.analysis.plots import save_selectivity_outputs
    from reaf_lightning.analysis.stats import selectivity_frame, summarize

    def frame(seed: int) -> pd.DataFrame:
        g = torch.Generator().manual_seed(seed)
        return selectivity_frame({"m": {"layer1": torch.rand(16, generator=g)}})

    first = frame(0)
    save_selectivity_outputs(first, summarize(first), tmp_path, stem="si")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["si.csv", "si.pdf", "si.png", "si_summary.csv"]

    real_to_csv = pd.DataFrame.to_csv

    def to_csv(self, path, *args, **kwargs):  # the disk fills up in the summary table
        if "summary" in str(path):
            Path(path).write_text("layer,model,units\nlayer1,m,")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_to_csv(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    second = frame(1)
    with pytest.raises(OSError, match="(?i)no space left"):
        save_selectivity_outputs(second, summarize(second), tmp_path, stem="si")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_settings_nothing_restores_may_change_on_resume(trained_run):
    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    same = ImageClassifier(**saved)
    check_checkpoint(checkpoint, same, resume=True)  # accepted
    smoother = ImageClassifier(**{**saved, "label_smoothing": 0.1})
    check_checkpoint(checkpoint, smoother, resume=True)  # the loss is not in the checkpoint
    faster = ImageClassifier(**{**saved, "momentum": 0.5})
    with pytest.raises(CheckpointError, match=r"model\.momentum: 0\.9 -> 0\.5"):
        check_checkpoint(checkpoint, faster, resume=True)
    check_checkpoint(checkpoint, faster, resume=False)  # evaluating ignores optimiser settings


def test_a_resume_reads_its_checkpoint_once(trained_run, tmp_path, monkeypatch):
    """The check of ``--ckpt_path`` reads the file; Lightning's restore gets what it read."""
    root = tmp_path / "copy"
    shutil.copytree(trained_run, root / "seed0")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    loads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        loads.append(f)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    args = [*TINY_ARGS, "--trainer.logger", "false", "--trainer.default_root_dir", str(root)]
    cli = run(["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert cli.trainer.global_step == 6  # resumed after the 3 steps of epoch 0
    assert loads == [root / "seed0" / "checkpoints" / "last.ckpt"]
    loads.clear()
    run(["validate", *args, "--ckpt_path", "last"])
    assert len(loads) == 1


def test_read_network_is_the_checkpoints_network_and_what_it_is(trained_run, tmp_path):
    """The one reader against Lightning's own: ``load_from_checkpoint``'s network."""
    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    content = _ckpt(checkpoint)
    saved = read_network(checkpoint)
    hp = content["hyper_parameters"]
    assert saved.settings == {
        "arch": hp["arch"],
        "arch_kwargs": dict(hp["arch_kwargs"]),
        "num_classes": hp["num_classes"],
    }
    assert (saved.epoch, saved.global_step) == (content["epoch"], content["global_step"])
    assert saved.record == RunRecord.model_validate(content["reaf_run"])
    assert saved.record.data.class_path.endswith("DigitsDataModule")
    reference = ImageClassifier.load_from_checkpoint(checkpoint, weights_only=True).net.eval()
    net = saved.rebuild()
    assert list(saved.state_dict) == list(reference.state_dict())  # no "net." left
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)

    plain = tmp_path / "plain.pt"
    torch.save(net.state_dict(), plain)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint.*bare state_dict"):
        read_network(plain)
    bare = read_network(plain, plain=True)
    assert (bare.arch, bare.record, bare.epoch) == (None, None, None)
    assert bare.state_dict.keys() == saved.state_dict.keys()

    other = tmp_path / "other.ckpt"
    torch.save({**content, "hyper_parameters": {"lr": 0.1}}, other)
    with pytest.raises(CheckpointError, match="do not say which network it holds"):
        read_network(other)
    torch.save({**content, "reaf_run": {"data": "digits"}}, other)
    with pytest.raises(RecordError, match=r"other.ckpt \(reaf_run\): not a reaf-run/1"):
        read_network(other)
