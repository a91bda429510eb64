"""The selectivity callback in a real Trainer with a real offline W&B run.

One tiny REAF network is trained for two epochs (one batch each) per session;
the callback's CSV, logged metrics and W&B histograms are compared with
:func:`reaf_lightning.analysis.hooks.compute_selectivity` run by hand on the trained network.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import REPO

from reaf_lightning.analysis.hooks import compute_selectivity
from reaf_lightning.analysis.training_callback import SelectivityCallback
from reaf_lightning.data import DigitsDataModule
from reaf_lightning.errors import ConfigError
from reaf_lightning.training.module import ImageClassifier

LAYERS = ["layer1", "layer4"]
MAX_BATCHES = 2


def _data() -> DigitsDataModule:
    return DigitsDataModule(image_size=16, batch_size=32)


def _trainer(root: Path, callback: SelectivityCallback, **kwargs) -> pl.Trainer:
    options = dict(
        max_epochs=2, limit_train_batches=1, limit_val_batches=3, num_sanity_val_steps=1,
        log_every_n_steps=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", default_root_dir=str(root),
    )  # fmt: skip
    options.update(kwargs)
    return pl.Trainer(callbacks=[callback], **options)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, monkeypatch_module):
    """Two epochs with the callback every 2 epochs and a real offline W&B logger."""
    from lightning.pytorch.loggers import WandbLogger

    root = tmp_path_factory.mktemp("callback_run")
    monkeypatch_module.setenv("WANDB_MODE", "offline")
    monkeypatch_module.setenv("WANDB_SILENT", "true")
    torch.manual_seed(0)
    module = ImageClassifier(arch="test_reaf_resnet", num_classes=10, lr=0.05)
    callback = SelectivityCallback(every_n_epochs=2, layers=LAYERS, max_batches=MAX_BATCHES)
    logger = WandbLogger(project="reaf-test", save_dir=str(root))
    trainer = _trainer(root, callback, logger=logger)
    trainer.fit(module, datamodule=_data())
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    logger.experiment.finish()
    import wandb

    wandb.teardown()  # wait until W&B's service has written the run file
    return {"root": root, "module": module, "trainer": trainer, "logged": logged}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _reference(module: ImageClassifier) -> dict[str, torch.Tensor]:
    dm = _data()
    dm.setup("validate")
    return compute_selectivity(
        module.net, dm.val_dataloader(), layers=LAYERS, max_batches=MAX_BATCHES
    )


def test_csv_in_run_dir_matches_library_on_the_trained_network(fitted):
    table = pd.read_csv(fitted["root"] / "selectivity.csv")
    assert list(table.columns) == ["epoch", "step", "layer", "unit", "si"]
    assert set(table.epoch) == {1}  # every 2 epochs: after epoch index 1 only; not sanity check
    assert set(table.step) == {2}
    expected = _reference(fitted["module"])
    for layer in LAYERS:
        got = table[table.layer == layer].sort_values("unit").si.to_numpy()
        np.testing.assert_allclose(got, expected[layer].numpy(), rtol=1e-5, atol=1e-6)
        assert fitted["logged"][f"selectivity/{layer}/mean"] == pytest.approx(
            float(expected[layer].mean()), rel=1e-5
        )
        assert fitted["logged"][f"selectivity/{layer}/median"] == pytest.approx(
            float(expected[layer].median()), rel=1e-5
        )


def test_wandb_run_has_histograms_and_per_layer_statistics(fitted):
    from helpers.wandb_records import run_contents

    (run_file,) = fitted["root"].glob("wandb/offline-run-*/run-*.wandb")
    history = run_contents(run_file)["history"]
    rows = [r for r in history if "selectivity/layer1/histogram/_type" in r]
    assert len(rows) == 1 and rows[0]["selectivity/layer1/histogram/_type"] == "histogram"
    table = pd.read_csv(fitted["root"] / "selectivity.csv")
    channels = int((table.layer == "layer4").sum())
    assert sum(rows[0]["selectivity/layer4/histogram/values"]) == channels  # one per channel
    assert any("selectivity/layer4/median" in r for r in history)


def test_validate_replaces_the_epoch_rows_and_keeps_the_file_whole(fitted):
    trainer = _trainer(fitted["root"], SelectivityCallback(layers=LAYERS, max_batches=1))
    trainer.validate(fitted["module"], datamodule=_data(), verbose=False)
    table = pd.read_csv(fitted["root"] / "selectivity.csv")
    # A new Trainer's validate() runs at epoch 0: a new block of rows, epoch 1 untouched.
    assert sorted(set(table.epoch)) == [0, 1]
    per_epoch = table.groupby("epoch").size()
    assert per_epoch[0] == per_epoch[1]  # same layers and channels, rows not duplicated
    assert sorted(p.name for p in fitted["root"].glob(".selectivity*")) == []  # no temporaries


def test_unknown_layer_fails_at_setup_before_training(tmp_path):
    module = ImageClassifier(arch="test_resnet", num_classes=10)
    trainer = _trainer(tmp_path, SelectivityCallback(layers=["layer9"]))
    with pytest.raises(ConfigError, match="unknown layer 'layer9'"):
        trainer.fit(module, datamodule=_data())
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    "layers, match",
    [
        (["fc"], r"layer 'fc' \(Linear\) can output negative values.* is 'avgpool'"),
        (["layer1.0.bn1"], r"layer 'layer1.0.bn1' \(BatchNorm2d\) can output negative"),
        (
            ["layer1", "layer1.0.relu"],
            r"layer 'layer1.0.relu' \(ReLU\) runs more than once \(2 times\)",
        ),
        ([""], "holds an empty name"),
    ],
)
def test_undefined_or_ambiguous_layer_fails_at_setup_before_training(tmp_path, layers, match):
    """Refused at set-up (one forward pass of blank images), not after every_n_epochs epochs."""
    module = ImageClassifier(arch="test_resnet", num_classes=10)
    callback = SelectivityCallback(layers=layers, every_n_epochs=5)
    trainer = _trainer(tmp_path, callback, num_sanity_val_steps=0)
    with pytest.raises(ConfigError, match=match):
        trainer.fit(module, datamodule=_data())
    assert trainer.global_step == 0
    assert not (tmp_path / "selectivity.csv").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"max_batches": 0}, "max_batches"),
        ({"filename": "../x.csv"}, "plain file name"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SelectivityCallback(**kwargs)


def test_paper_row_switch_config_builds_the_callback():
    from jsonargparse import ArgumentParser

    from reaf_lightning.io import read_yaml

    repo = REPO
    config = read_yaml(repo / "configs" / "callbacks" / "selectivity.yaml")
    (entry,) = config["trainer"]["callbacks"]
    parser = ArgumentParser()
    parser.add_argument("--callback", type=pl.Callback)
    init = parser.instantiate(parser.parse_object({"callback": entry}))
    assert isinstance(init.callback, SelectivityCallback)


def test_a_fit_shorter_than_the_interval_is_told_it_records_nothing(tmp_path):
    callback = SelectivityCallback(every_n_epochs=10, layers=LAYERS)
    trainer = _trainer(tmp_path, callback, max_epochs=1, limit_val_batches=1)
    module = ImageClassifier(arch="test_reaf_resnet", num_classes=10)
    with pytest.warns(UserWarning, match="every 10 epochs, but this fit trains 1: it will record"):
        trainer.fit(module, datamodule=_data())
    assert not (tmp_path / "selectivity.csv").exists()  # as it said
