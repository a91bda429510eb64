"""The private attributes ``reaf_lightning.training.private_api`` reaches still do what it uses.

Each test checks the library's attribute itself, with a real ``Trainer`` or
``LightningCLI``, so that an upgrade that renames or changes one fails here, by
name. The features built on them have their own tests (``last.ckpt`` every
epoch, the bit-identical resume, the refusal of a checkpoint of another network).
"""

from __future__ import annotations

import inspect
import sys

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reaf_lightning import ImageClassifier
from reaf_lightning.data import DigitsDataModule
from reaf_lightning.training.private_api import (
    ConfigDecidesTheModel,
    forget_train_dataloader,
    rerun_interrupted_validation,
    save_last_checkpoint,
    saves_on_train_epoch_end,
    skips_saving,
    tensor_version,
)


class _Tiny(pl.LightningModule):
    """One linear layer on 8 random rows, batches of 4; records the fit loop's train loader."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.loaders: list[object] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, max_epochs: int = 1, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_lightning_cli_loads_the_checkpoints_model_in_parse_ckpt_path(trained_run, monkeypatch):
    """LightningCLI replaces the configured model by a ``--ckpt_path`` file's hyperparameters
    in ``_parse_ckpt_path``, between ``parse_arguments`` and ``before_instantiate_classes``,
    even with ``load_from_checkpoint_support=False``; the mixin's empty method keeps the
    configured one."""
    monkeypatch.setattr(sys, "argv", ["probe"])  # LightningCLI compares it with `args`
    source = inspect.getsource(LightningCLI.__init__)
    order = [
        "self.parse_arguments(",
        "self._parse_ckpt_path()",
        "self.before_instantiate_classes()",
    ]
    assert sorted(order, key=source.index) == order

    class Parsed(Exception):
        pass

    def stop_after_parsing(cli: LightningCLI) -> None:
        raise Parsed(cli.config.fit.model.arch)

    args = [
        "fit",
        "--model.arch",
        "test_resnet",
        "--data",
        "DigitsDataModule",
        "--ckpt_path",
        str(trained_run / "checkpoints" / "last.ckpt"),  # a test_reaf_resnet's
    ]
    built = {}
    for name, bases in (
        ("lightning", (LightningCLI,)),
        ("ours", (ConfigDecidesTheModel, LightningCLI)),
    ):
        cli_class = type("Probe", bases, {"before_instantiate_classes": stop_after_parsing})
        with pytest.raises(Parsed) as parsed:
            cli_class(
                ImageClassifier,
                DigitsDataModule,
                subclass_mode_data=True,
                load_from_checkpoint_support=False,
                args=args,
            )
        built[name] = parsed.value.args[0]
    assert built == {"lightning": "test_reaf_resnet", "ours": "test_resnet"}


def test_model_checkpoint_says_when_it_saves(tmp_path):
    trainer = _trainer(tmp_path, check_val_every_n_epoch=2)
    assert saves_on_train_epoch_end(ModelCheckpoint(save_on_train_epoch_end=True), trainer)
    assert not saves_on_train_epoch_end(ModelCheckpoint(save_on_train_epoch_end=False), trainer)
    # None: decided from the trainer; validation every 2nd epoch defers to validation end
    assert not saves_on_train_epoch_end(ModelCheckpoint(), trainer)
    assert skips_saving(ModelCheckpoint(), trainer)  # not fitting


def test_model_checkpoint_writes_last_ckpt_when_asked(tmp_path):
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=0, save_last=False)
    trainer = _trainer(tmp_path, callbacks=[callback])
    trainer.fit(_Tiny())
    assert list((tmp_path / "ckpts").glob("*")) == []  # nothing saved during the fit
    callback.save_last = True
    assert not skips_saving(callback, trainer)  # fitting state, nothing saved at this step
    save_last_checkpoint(callback, trainer)
    last = tmp_path / "ckpts" / "last.ckpt"
    assert callback.last_model_path == str(last)
    assert torch.load(last, weights_only=True)["global_step"] == trainer.global_step == 2
    assert skips_saving(callback, trainer)  # saved at this step


def test_the_fit_loop_keeps_the_early_train_loader_until_it_is_forgotten(tmp_path):
    class Probe(_Tiny):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            assert self.trainer.estimated_stepping_batches == 2  # builds the train loader now
            self.loaders.append(self.trainer.fit_loop._combined_loader)
            forget_train_dataloader(self.trainer)
            self.loaders.append(self.trainer.fit_loop._combined_loader)
            return super().configure_optimizers()

        def on_train_start(self) -> None:
            self.loaders.append(self.trainer.fit_loop._combined_loader)

    model = Probe()
    _trainer(tmp_path).fit(model)
    early, forgotten, used = model.loaders
    assert early is not None and forgotten is None
    assert used is not None and used is not early  # built again by the fit loop


class _Validated(_Tiny):
    """:class:`_Tiny` with 3 validation batches; counts the (epoch, batch) it validates."""

    def __init__(self) -> None:
        super().__init__()
        self.validated: list[tuple[int, int]] = []

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        if not self.trainer.sanity_checking:
            self.validated.append((self.current_epoch, batch_idx))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)


class _SaveMidValidation(pl.Callback):
    """Save a checkpoint after the second validation batch of epoch 1 (where SIGTERM stops)."""

    def __init__(self, path: str, rewrite: bool) -> None:
        self.path, self.rewrite, self.saving = path, rewrite, False

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        if not trainer.sanity_checking and trainer.current_epoch == 1 and batch_idx == 1:
            self.saving = True
            trainer.save_checkpoint(self.path)
            self.saving = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.saving and self.rewrite:
            rerun_interrupted_validation(checkpoint)


@pytest.mark.parametrize("rewrite", [False, True])
def test_a_checkpoint_saved_mid_validation_reruns_it_only_when_rewritten(tmp_path, rewrite):
    """Lightning restores a checkpoint saved between two validation batches as if that
    validation were over; with the rewritten progress the resume validates all 3 batches."""
    path = str(tmp_path / "mid.ckpt")
    saver = _SaveMidValidation(path, rewrite)
    _trainer(tmp_path, max_epochs=2, callbacks=[saver]).fit(_Validated())
    saved = torch.load(path, weights_only=True)
    progress = saved["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    assert (progress["current"]["completed"], progress["is_last_batch"]) == (
        (0, False) if rewrite else (1, False)
    )
    resumed = _Validated()
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(resumed, ckpt_path=path)
    assert resumed.validated == ([(1, 0), (1, 1), (1, 2)] if rewrite else [])
    assert trainer.global_step == 4  # no training step was repeated or skipped


def test_tensor_version_counts_in_place_changes():
    tensor = torch.zeros(3)
    before = tensor_version(tensor)
    tensor.add_(1)
    assert isinstance(before, int) and tensor_version(tensor) == before + 1
    tensor.clone().mul_(2)  # another tensor's change
    assert tensor_version(tensor) == before + 1
