"""A NaN/inf loss or weight stops the run (exit 3) and never replaces a good checkpoint.

The policy lives in :class:`reaf_lightning.training.callbacks.NonFiniteLossPolicy` and
:class:`~reaf_lightning.training.saving.FiniteCheckpointGuard`. Faults are injected
into real ``reaf-lightning fit`` runs (tiny config, 4 steps per epoch) at a
known epoch and batch by the callbacks of ``reliability_helpers``: NaN images
(a non-finite loss) or a NaN weight after an optimizer step (a diverged update
whose loss was still finite).
"""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers.fit_processes import tiny_config, write_config
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from reaf_lightning import ImageClassifier
from reaf_lightning.training.callbacks import NonFiniteLossPolicy
from reaf_lightning.training.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

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
        f"--trainer.callbacks+=helpers.fit_processes.{name}",
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


def _run_dir(root: Path) -> Path:
    """The run directory: ``<default_root_dir>/seed<N>`` with an integer seed (the config's
    is 0), ``<default_root_dir>`` itself where the CLI does not add the seed."""
    return next(p for p in (root / "seed0", root) if (p / "checkpoints").is_dir())


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
    last = _run_dir(tmp_path / "run") / "checkpoints" / "last.ckpt"
    assert line.startswith(
        f"non-finite training loss (nan) at epoch 1, global step {BATCHES + 1} (batch 1 of the "
        f"epoch); training stopped (non_finite.policy=stop) and the last good checkpoint {last} "
        "is kept"
    )
    assert "non_finite.policy=skip" in line
    _epoch0_checkpoint_is_intact(_run_dir(tmp_path / "run"))


# the poisoned weights make the validation metrics see NaN logits, on purpose
@pytest.mark.filterwarnings("ignore:Encountered `nan` values in tensor:UserWarning")
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
    _epoch0_checkpoint_is_intact(_run_dir(tmp_path / "run"))


def test_skip_policy_skips_the_bad_batch_and_nothing_else(config, tmp_path):
    record = tmp_path / "record"
    with (
        pytest.warns(UserWarning, match="skipping a batch") as warned,
        pytest.raises(SystemExit) as done,
    ):
        main(
            [
                "fit",
                "--config",
                str(config),
                "--non_finite.policy",
                "skip",
                *_inject("PoisonBatch", 1, 1),
                *_inject("RecordStep", 1, 1, out_dir=record / "bad"),
                *_inject("RecordStep", 1, 2, out_dir=record / "good"),
            ]
        )
    assert done.value.code == 0
    message = next(str(w.message) for w in warned if "skipping a batch" in str(w.message))
    assert f"at epoch 1, global step {BATCHES + 1} (batch 1 of the epoch)" in message
    assert "1 batch(es) skipped so far" in message
    run_dir = _run_dir(tmp_path / "run")
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 2 * BATCHES)  # finished, step counted
    (policy,) = [v for k, v in last["callbacks"].items() if k.startswith("NonFiniteLossPolicy")]
    assert policy == {"skipped_batches": 1}

    before = torch.load(record / "bad" / "before.pt")
    after = torch.load(record / "bad" / "after.pt")
    for name in before:  # weights, BatchNorm statistics and counters: all untouched
        assert torch.equal(before[name], after[name]), name
    before = torch.load(record / "good" / "before.pt")
    after = torch.load(record / "good" / "after.pt")
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert "net.conv1.weight" in changed and any("running_mean" in n for n in changed)

    for name, value in last["state_dict"].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name
    (metrics_file,) = (tmp_path / "run").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    assert {float(r["train/skipped_batches"]) for r in rows if r["train/skipped_batches"]} == {1.0}
    val_losses = [float(r["val/loss"]) for r in rows if r["val/loss"]]
    assert len(val_losses) == 2 and all(math.isfinite(v) for v in val_losses)


class _PoisonAndWatch(Callback):
    """NaN images in batch ``bad``; keeps weights, buffers and optimizer state around it."""

    def __init__(self, bad: int) -> None:
        self.bad, self.states = bad, {}

    def _state(self, trainer, pl_module) -> dict:
        return copy.deepcopy(
            {"module": pl_module.state_dict(), "optimizer": trainer.optimizers[0].state_dict()}
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.bad:
            batch[0].fill_(float("nan"))
        self.states[("before", batch_idx)] = self._state(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.states[("after", batch_idx)] = self._state(trainer, pl_module)


def _differs(a: dict, b: dict) -> list[str]:
    """Names of the tensors (weights, buffers, momentum buffers) that differ."""
    names = [n for n in a["module"] if not torch.equal(a["module"][n], b["module"][n])]
    for i, state in a["optimizer"]["state"].items():
        if not torch.equal(state["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"]):
            names.append(f"momentum[{i}]")
    return names


# trains only: the classifier has a validation_step, the test gives it no val loader
@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_skipped_batch_leaves_momentum_and_weight_decay_alone():
    # Gradients are dropped before the optimizer step: SGD must not move the weights through
    # momentum or weight decay either, and the next good batch must update all of them.
    torch.manual_seed(0)
    x, y = torch.randn(12, 3, 8, 8), torch.randint(0, 10, (12,))
    model = ImageClassifier("test_resnet", num_classes=10, lr=0.1, weight_decay=1e-2)
    watch = _PoisonAndWatch(bad=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[watch, NonFiniteLossPolicy("skip")],
    )
    with pytest.warns(UserWarning, match="skipping a batch"):
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    states = watch.states
    assert _differs(states[("before", 1)], states[("after", 1)]) == []
    changed = _differs(states[("before", 2)], states[("after", 2)])
    assert "net.conv1.weight" in changed and "momentum[0]" in changed
    assert trainer.global_step == 3


def test_skip_policy_stops_when_the_model_has_diverged(config, capsys):
    # NaN weights make every later loss NaN: skipping forever would hide the divergence.
    with pytest.warns(UserWarning, match="skipping a batch"):  # skipped before it stops
        line = _stops(
            [
                "fit",
                "--config",
                str(config),
                "--non_finite.policy",
                "skip",
                "--non_finite.max_consecutive_skips",
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


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("policy", "ignore", "non_finite.policy"),
        ("max_consecutive_skips", "0", "max_consecutive_skips must be >= 1, got 0"),
    ],
)
def test_the_policy_settings_are_validated(config, capsys, flag, value, expected):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(config), f"--non_finite.{flag}", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and value in err and "Traceback" not in err
    assert not (Path(config).parent / "run").exists()  # refused before anything was written
