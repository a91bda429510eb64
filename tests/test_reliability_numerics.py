"""Issue 6, item 5: a NaN/inf loss or weight stops the run and never replaces a good checkpoint.

Faults are injected into real ``reaf-lightning fit`` runs (tiny config, 4 steps
per epoch) at a known epoch and batch by the callbacks of
``reliability_helpers``: NaN images (a non-finite loss) or a NaN weight after
an optimizer step (a diverged update whose loss was still finite).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from reliability_helpers import one_thread, tiny_config, write_config  # noqa: F401 (fixture)

from reaf_lightning.cli import main, run

BATCHES = 4


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.delenv("REAF_DEBUG", raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def config(tmp_path) -> Path:
    return write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path / "run", 2, BATCHES))


def _inject(name: str, epoch: int, batch: int, **extra: object) -> list[str]:
    args = [
        f"--trainer.callbacks+=reliability_helpers.{name}",
        "--trainer.callbacks.init_args.epoch",
        str(epoch),
        "--trainer.callbacks.init_args.batch",
        str(batch),
    ]
    for key, value in extra.items():
        args += [f"--trainer.callbacks.init_args.{key}", str(value)]
    return args


def _stops(args: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("reaf-lightning:")]
    return line.removeprefix("reaf-lightning: error: ")


def _epoch0_checkpoint_is_intact(root: Path) -> None:
    """last.ckpt is still the one written after epoch 0, complete and finite."""
    files = sorted(p.name for p in (root / "checkpoints").iterdir())
    assert files == ["best-epoch=000.ckpt", "last.ckpt"]  # nothing from epoch 1, no temporaries
    last = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (0, BATCHES)
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(config, tmp_path, capsys):
    line = _stops(["fit", "--config", str(config), *_inject("PoisonBatch", 1, 1)], capsys)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert line.startswith(
        f"non-finite training loss (nan) at epoch 1, global step {BATCHES + 1} (batch 1 of the "
        f"epoch); training stopped (model.nan_policy=stop) and the last good checkpoint {last} "
        "is kept"
    )
    assert "model.nan_policy=skip" in line
    _epoch0_checkpoint_is_intact(tmp_path / "run")


def test_nan_weights_are_never_saved(config, tmp_path, capsys):
    # A NaN weight after the last step of epoch 1: the loss of that step was finite, so only
    # the checkpoint guard can notice before the end-of-epoch checkpoint replaces last.ckpt.
    line = _stops(
        ["fit", "--config", str(config), *_inject("PoisonWeights", 1, BATCHES - 1)], capsys
    )
    assert line.startswith(
        f"non-finite values in net.conv1.weight at epoch 1, global step {2 * BATCHES}: "
        "not saving this checkpoint"
    )
    _epoch0_checkpoint_is_intact(tmp_path / "run")


def test_skip_policy_skips_the_bad_batch_and_nothing_else(config, tmp_path):
    record = tmp_path / "record"
    with pytest.warns(UserWarning, match="skipping a batch") as warned:
        cli = run(
            [
                "fit",
                "--config",
                str(config),
                "--model.nan_policy",
                "skip",
                *_inject("PoisonBatch", 1, 1),
                *_inject("RecordStep", 1, 1, out_dir=record / "bad"),
                *_inject("RecordStep", 1, 2, out_dir=record / "good"),
            ]
        )
    message = next(str(w.message) for w in warned if "skipping a batch" in str(w.message))
    assert f"at epoch 1, global step {BATCHES + 1} (batch 1 of the epoch)" in message
    assert "1 batch(es) skipped so far" in message
    assert cli.trainer.state.finished and cli.trainer.global_step == 2 * BATCHES
    assert cli.model.skipped_batches == 1

    before = torch.load(record / "bad" / "before.pt")
    after = torch.load(record / "bad" / "after.pt")
    for name in before:  # weights, BatchNorm statistics and counters: all untouched
        assert torch.equal(before[name], after[name]), name
    before = torch.load(record / "good" / "before.pt")
    after = torch.load(record / "good" / "after.pt")
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert "net.conv1.weight" in changed and any("running_mean" in n for n in changed)

    for name, value in cli.model.state_dict().items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name
    assert math.isfinite(cli.trainer.callback_metrics["val/loss"].item())


def test_skip_policy_stops_when_the_model_has_diverged(config, capsys):
    # NaN weights make every later loss NaN: skipping forever would hide the divergence.
    line = _stops(
        [
            "fit",
            "--config",
            str(config),
            "--model.nan_policy",
            "skip",
            "--model.max_consecutive_skips",
            "2",
            *_inject("PoisonWeights", 0, 0),
        ],
        capsys,
    )
    assert line.startswith(
        "2 consecutive non-finite training losses (last nan at epoch 0, "
        "global step 2 (batch 2 of the epoch)): the model has most likely "
        "diverged; training stopped and no checkpoint had been saved yet"
    )


def test_nan_policy_is_validated(config, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(config), "--model.nan_policy", "ignore"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "model.nan_policy: got 'ignore', expected one of 'stop', 'skip'" in err
