"""``reaf-lightning``: the LightningCLI that runs every experiment of the paper (SPEC.md §4).

``reaf-lightning fit --config configs/quickstart.yaml`` trains; ``validate``,
``test`` and ``predict`` evaluate. Several ``--config`` files compose (later
ones override), which is how a shared recipe and a per-model file combine.

What the CLI adds to Lightning's:

* the model is always :class:`~reaf_lightning.ImageClassifier`; the data
  module is any ``LightningDataModule`` chosen by class path, and its
  ``num_classes`` is linked into the model;
* a ``checkpoint:`` group (a ``ModelCheckpoint`` monitoring ``val/acc1``,
  ``save_last=True``) whose ``dirpath`` defaults to
  ``<trainer.default_root_dir>/checkpoints`` — a fixed place, so that
  ``--ckpt_path last`` finds the previous run's ``last.ckpt`` and resumes;
* the W&B logger's ``save_dir`` defaults to ``trainer.default_root_dir`` too,
  and the full resolved config is logged to every logger.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import (
    ArgsType,
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)

from reaf_lightning.module import ImageClassifier

__all__ = ["DEFAULT_ROOT_DIR", "ReafLightningCLI", "main", "run"]

DEFAULT_ROOT_DIR = "logs"


class LogConfigCallback(SaveConfigCallback):
    """Save ``config.yaml`` to the run directory and log the resolved config to the loggers."""

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        config = self.config.clone()
        config.pop("config", None)  # the list of --config paths: not a setting
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config.as_dict()})


class ReafLightningCLI(LightningCLI):
    """LightningCLI with the project's checkpointing, linking and logging defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc1",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{epoch:03d}",
            }
        )
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """Place checkpoints and W&B files under ``trainer.default_root_dir`` unless set."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir or DEFAULT_ROOT_DIR
        config.trainer.default_root_dir = root
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = os.path.join(root, "checkpoints")
        for logger in _logger_configs(config.trainer.logger):
            init_args = logger.get("init_args")
            if init_args is not None and "save_dir" in init_args and init_args.save_dir is None:
                init_args.save_dir = root


def _logger_configs(value: Any) -> Iterator[Namespace]:
    """The ``class_path``/``init_args`` namespaces in a ``trainer.logger`` value."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, Namespace):
            yield item


def run(args: ArgsType = None) -> ReafLightningCLI:
    """Parse ``args``, build model, data and trainer, run the subcommand; return the CLI.

    Tests and notebooks use the returned object (``cli.trainer``, ``cli.model``).
    """
    return ReafLightningCLI(
        ImageClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: ArgsType = None) -> None:
    """Entry point of ``reaf-lightning``; ``args`` as on the command line (``None``: ``sys.argv``).

    Returns ``None`` so that the console script exits with status 0 on success
    (a returned object would be printed and turned into exit status 1).
    """
    run(args)


if __name__ == "__main__":
    main()
