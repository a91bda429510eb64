"""``reaf-lightning``: the LightningCLI that runs every experiment of the paper (SPEC.md §4).

``reaf-lightning fit --config configs/quickstart.yaml`` trains; ``validate``,
``test`` and ``predict`` evaluate. Several ``--config`` files compose (later
ones override), which is how a shared recipe and a per-model file combine.

What the CLI adds to Lightning's:

* the model is always :class:`~reaf_lightning.ImageClassifier`; the data
  module is any ``LightningDataModule`` chosen by class path, and its
  ``num_classes`` is linked into the model;
* a ``checkpoint:`` group (a ``ModelCheckpoint`` monitoring ``val/acc1``,
  ``save_last=True``, with ``last.ckpt`` rewritten every epoch:
  :class:`~reaf_lightning.callbacks.EveryEpochLastCheckpoint`) whose ``dirpath`` defaults to
  ``<trainer.default_root_dir>/checkpoints`` — a fixed place, so that
  ``--ckpt_path last`` finds the previous run's ``last.ckpt`` and resumes;
* the W&B logger's ``save_dir`` defaults to ``trainer.default_root_dir`` too,
  and the full resolved config is logged to every logger.

Reliability *(issue 6, README "Reliability")*: checkpoints are written
atomically (:class:`~reaf_lightning.checkpointing.AtomicCheckpointIO`); ``SIGTERM``
saves ``last.ckpt`` (:class:`~reaf_lightning.callbacks.PreemptionCheckpoint`) and
exits with status 143; ``--ckpt_path`` is checked (loads, is a Lightning
checkpoint, fits the model) before Lightning sees it, and ``--ckpt_path last``
without a previous run starts a new one (``fit``) or is an error (evaluation).
User errors are one line and exit status 2 (policy in
:mod:`reaf_lightning.cli_errors`); ``REAF_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import contextvars
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError, Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import (
    ArgsType,
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from reaf_lightning.callbacks import (
    EveryEpochLastCheckpoint,
    standard_callbacks,
)
from reaf_lightning.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointInfo,
    check_compatible,
    find_last_checkpoint,
    inspect_checkpoint,
)
from reaf_lightning.cli_errors import (
    EXIT_NONFINITE,
    EXIT_PREEMPTED,
    EXIT_USER_ERROR,
    ConfigError,
    describe_error,
    format_parse_error,
    is_user_error,
    unwrap,
)
from reaf_lightning.module import ImageClassifier, NonFiniteTrainingError

__all__ = ["DEBUG_ENV", "DEFAULT_ROOT_DIR", "ReafLightningCLI", "main", "run"]

DEFAULT_ROOT_DIR = "logs"
DEBUG_ENV = "REAF_DEBUG"  # =1: full tracebacks (shared with reaf-analysis)
PROG = "reaf-lightning"
#: ``--ckpt_path`` values Lightning resolves itself (not file names).
_SPECIAL_CKPT = ("last", "best", "hpc", "registry")
#: "build" until the Trainer method (fit/validate/...) starts, then "run" (see cli_errors).
_PHASE: contextvars.ContextVar[str] = contextvars.ContextVar("reaf_cli_phase", default="build")


class LogConfigCallback(SaveConfigCallback):
    """Save ``config.yaml`` to the run directory and log the resolved config to the loggers."""

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        config = self.config.clone()
        config.pop("config", None)  # the list of --config paths: not a setting
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config.as_dict()})


class ReafLightningCLI(LightningCLI):
    """LightningCLI with the project's checkpointing, linking, logging and failure handling."""

    _ckpt_info: CheckpointInfo | None = None

    # -- parsing -----------------------------------------------------------------------------
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse; a parse error becomes a one-line :class:`ConfigError`; check ``--ckpt_path``.

        The checkpoint is opened here, before LightningCLI reads its
        hyperparameters (``torch.load`` of a corrupt file would otherwise end
        in a traceback) and before any model or data is built.
        """
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            argv = _argv(args)
            sub = next((a for a in argv if a in self.subcommands()), None)
            target = self._subcommand_parsers.get(sub, parser) if sub else parser
            keys = [a.dest for a in target._actions]
            raise ConfigError(format_parse_error(str(err), keys, _config_files(argv))) from None
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and ckpt_path not in _SPECIAL_CKPT and "://" not in str(ckpt_path):
            self._ckpt_info = inspect_checkpoint(
                ckpt_path,
                resume=subcommand == "fit",
                weights_only=config.get("weights_only") is not False,
            )

    def _parse_ckpt_path(self) -> None:
        """LightningCLI re-reads the model settings stored in the checkpoint; name it on failure."""
        try:
            super()._parse_ckpt_path()
        except ArgumentError as err:
            path = self._ckpt_info.path if self._ckpt_info else "--ckpt_path"
            raise CheckpointError(
                f"the model settings stored in {path} are not valid for this version of "
                f"ImageClassifier: {format_parse_error(str(err))}"
            ) from None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # last.ckpt after every epoch, as save_last meant before Lightning 2.6 (see callbacks.py)
        parser.add_lightning_class_args(EveryEpochLastCheckpoint, "checkpoint")
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

    # -- trainer ------------------------------------------------------------------------------
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Add :class:`AtomicCheckpointIO` and :class:`PreemptionCheckpoint` to the trainer.

        Both are added unless the configuration already has one of its own
        (a ``CheckpointIO`` plugin, a sharded strategy with its own checkpoint format).
        """
        config = self._get(self.config_init, "trainer", default={})
        callbacks = _as_list(config.get("callbacks"))
        have = {type(c) for c in callbacks}
        missing = [s for s in standard_callbacks() if type(s) not in have]
        if missing:
            kwargs.setdefault("callbacks", [*callbacks, *missing])
        plugins = _as_list(config.get("plugins"))
        strategy = config.get("strategy", "auto")
        own_io = (
            any(isinstance(p, CheckpointIO) for p in plugins)
            or getattr(strategy, "_checkpoint_io", None) is not None
        )
        sharded = isinstance(strategy, str) and strategy.startswith(("fsdp", "deepspeed"))
        if not own_io and not sharded:
            kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        return super().instantiate_trainer(**kwargs)

    # -- checkpoints before each subcommand ---------------------------------------------------
    def before_fit(self) -> None:
        self._check_ckpt_path("fit")

    def before_validate(self) -> None:
        self._check_ckpt_path("validate")

    def before_test(self) -> None:
        self._check_ckpt_path("test")

    def before_predict(self) -> None:
        self._check_ckpt_path("predict")

    def _check_ckpt_path(self, subcommand: str) -> None:
        """Resolve ``last`` ourselves and check the checkpoint fits the model, then start."""
        config = self.config_init[subcommand]
        info = self._ckpt_info
        if config.get("ckpt_path") == "last":
            info = self._resolve_last(subcommand, config)
        if info is not None:
            check_compatible(info, self.model, f"model.arch={self.model.hparams.arch!r}")
        _PHASE.set("run")

    def _resolve_last(self, subcommand: str, config: Namespace) -> CheckpointInfo | None:
        """The newest ``last*.ckpt`` of the checkpoint directories, as Lightning would pick it.

        ``fit`` without one starts a new run (so the same command line can be
        resubmitted by a scheduler from the first job on); the evaluation
        subcommands have nothing to evaluate and stop.
        """
        dirs = [
            Path(cb.dirpath)
            for cb in self.trainer.checkpoint_callbacks
            if isinstance(cb, ModelCheckpoint) and cb.dirpath
        ]
        found = [p for p in (find_last_checkpoint(d) for d in dirs) if p is not None]
        where = ", ".join(str(d) for d in dirs) or "(no checkpoint directory)"
        if not found:
            if subcommand != "fit":
                raise CheckpointError(
                    f"--ckpt_path last: no last.ckpt in {where}, so there is nothing to "
                    f"{subcommand}; train first or pass a checkpoint file"
                )
            _info(f"--ckpt_path last: no checkpoint in {where} yet; starting a new run")
            config["ckpt_path"] = None
            return None
        newest = max(found, key=lambda p: p.stat().st_mtime_ns)
        info = inspect_checkpoint(
            newest, resume=subcommand == "fit", weights_only=config.get("weights_only") is not False
        )
        config["ckpt_path"] = str(newest)
        return info


@rank_zero_only
def _info(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _argv(args: ArgsType) -> list[str]:
    if args is None:
        return sys.argv[1:]
    return [str(a) for a in args] if isinstance(args, (list, tuple)) else []


def _config_files(argv: Sequence[str]) -> list[str]:
    """The values of ``--config``/``-c`` in ``argv``."""
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _logger_configs(value: Any) -> Iterator[Namespace]:
    """The ``class_path``/``init_args`` namespaces in a ``trainer.logger`` value."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, Namespace):
            yield item


def run(args: ArgsType = None) -> ReafLightningCLI:
    """Parse ``args``, build model, data and trainer, run the subcommand; return the CLI.

    Tests and notebooks use the returned object (``cli.trainer``, ``cli.model``).
    """
    debug = os.environ.get(DEBUG_ENV) == "1"
    return ReafLightningCLI(
        ImageClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True},
        # jsonargparse's own handler prints the whole usage (~100 lines) before the error.
        parser_kwargs={"exit_on_error": debug},
        args=args,
    )


def main(args: ArgsType = None) -> None:
    """Entry point of ``reaf-lightning``; ``args`` as on the command line (``None``: ``sys.argv``).

    Returns ``None`` so that the console script exits with status 0 on success
    (a returned object would be printed and turned into exit status 1). Exit
    statuses: 0 done, 2 user error, 3 non-finite loss/weights, 143 preempted by
    ``SIGTERM`` (``last.ckpt`` saved), 130 Ctrl-C, 1 a bug (with its traceback).
    """
    debug = os.environ.get(DEBUG_ENV) == "1"
    token = _PHASE.set("build")
    try:
        run(args)
    except SIGTERMException as err:  # a SystemExit: must come before the generic one
        _preempted(err)
        raise SystemExit(EXIT_PREEMPTED) from None
    except NonFiniteTrainingError as err:
        if debug:
            raise
        _error(describe_error(err))
        raise SystemExit(EXIT_NONFINITE) from None
    except KeyboardInterrupt:
        if debug:
            raise
        _error("interrupted (Ctrl-C); the last saved checkpoint is intact")
        raise SystemExit(130) from None
    except Exception as err:
        cause = unwrap(err)
        if debug or not is_user_error(cause, building=_PHASE.get() == "build"):
            raise
        _error(describe_error(cause))
        raise SystemExit(EXIT_USER_ERROR) from None
    finally:
        _PHASE.reset(token)


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


@rank_zero_only
def _preempted(err: SIGTERMException) -> None:
    path = getattr(err, "reaf_checkpoint", None)
    if path is None:
        print(
            f"{PROG}: stopped by SIGTERM; no checkpoint was saved by this run",
            file=sys.stderr,
            flush=True,
        )
        return
    epoch, step = err.reaf_progress  # type: ignore[attr-defined]
    print(
        f"{PROG}: preempted by SIGTERM at epoch {epoch}, global step {step}; saved {path}; "
        "resume with --ckpt_path last",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    main()
