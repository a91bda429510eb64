"""Worker defaults that follow the machine (``num_workers=None``, reaf_lightning.data.base).

The reference is the rule written out with the CPUs this process may use
(``os.sched_getaffinity``), and, end to end, a real Trainer that must not warn about the
worker count (neither Lightning's "does not have many workers" nor PyTorch's "will create N
worker processes").
"""

from __future__ import annotations

import os
import warnings

import lightning.pytorch as pl
import pytest
import torch
from helpers.fake_data import write_cifar10, write_image_folder

from reaf_lightning.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    ImageFolderDataModule,
    default_num_workers,
)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.parametrize("processes", [1, 2, 8])
@pytest.mark.parametrize("cap", [2, 4, 8])
def test_default_workers_leave_a_cpu_per_process_and_respect_the_cap(cap, processes):
    expected = min(cap, max(1, _cpus() // processes - 1))
    assert default_num_workers(cap, processes) == expected


def test_modules_default_to_the_machine_and_keep_an_explicit_count(tmp_path):
    write_image_folder(tmp_path, classes=("a",), n_per_class=1, size=8)
    assert CIFAR100DataModule().num_workers == min(4, max(1, _cpus() - 1))
    assert ImageFolderDataModule(str(tmp_path)).num_workers == min(8, max(1, _cpus() - 1))
    assert CIFAR10DataModule(num_workers=3).num_workers == 3
    assert CIFAR10DataModule().hparams["num_workers"] is None  # the setting, not this machine's


class _Linear(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 32 * 32, 10)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.fc(batch[0].flatten(1)), batch[1])

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_fit_with_default_workers_prints_no_worker_count_warning(tmp_path):
    write_cifar10(tmp_path / "c10", n_per_batch=4, n_test=8)
    dm = CIFAR10DataModule(root=str(tmp_path / "c10"), batch_size=8)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_Linear(), datamodule=dm)
    about_workers = [str(w.message) for w in caught if "worker" in str(w.message).lower()]
    assert about_workers == []
    assert trainer.train_dataloader.num_workers == min(4, max(1, _cpus() - 1))
