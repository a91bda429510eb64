"""``reaf-lightning``: the LightningCLI that runs every experiment of the paper (paper §IV).

``reaf-lightning fit --config configs/quickstart.yaml`` trains; ``validate``,
``test`` and ``predict`` evaluate. Several ``--config`` files compose (later
ones override), which is how a shared recipe and a per-row file combine.

What this adds to Lightning's CLI, all through its public hooks (not part of
the paper; the reasons are in ``docs/reliability.md``):

* the model is always :class:`~reaf_lightning.ImageClassifier`; the data module
  is any ``LightningDataModule`` by class path, its ``num_classes`` linked into
  the model; every run gets :func:`~reaf_lightning.training.callbacks.standard_callbacks`;
* the **run directory** is ``trainer.default_root_dir``, with an integer
  ``seed_everything: N`` made ``<default_root_dir>/seed<N>`` (one directory, and
  one W&B run ``<name>/seed<N>``, per seed); it receives ``config.yaml``,
  ``checkpoints/`` (a ``checkpoint:`` group, ``last.ckpt`` every epoch) and the
  loggers' files, and every output location is checked writable before the work;
* ``--ckpt_path`` (a file, ``last`` or ``best``, found on disk) must hold the
  configured network, and a resumed ``fit`` must keep the optimiser and
  schedule settings (:func:`~reaf_lightning.runs.checkpoint.check_checkpoint`);
  the config, not the checkpoint, decides what is built;
* checkpoints are written atomically
  (:class:`~reaf_lightning.training.saving.AtomicCheckpointIO`), ``SIGTERM`` saves
  ``last.ckpt`` and exits 143, Ctrl-C exits 130 naming the last checkpoint, and
  every error follows :mod:`reaf_lightning.errors`.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import (
    ArgsType,
    LightningArgumentParser,
    LightningCLI,
)
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

# Imported so that jsonargparse knows the package's data modules: --help lists them and
# --data accepts their bare class names (--data DigitsDataModule).
from reaf_lightning import data as _data_modules  # noqa: F401
from reaf_lightning.commands import (
    ShortHelpFormatter,
    command_line,
    parse,
    prepare_arguments,
    run_main,
)
from reaf_lightning.errors import (
    DEBUG_ENV,
    EXIT_PREEMPTED,
    CheckpointError,
    ConfigError,
    OutputError,
    ReafError,
    message_of,
)
from reaf_lightning.io import (
    check_seed,
    ensure_writable,
)
from reaf_lightning.runs.checkpoint import (
    check_checkpoint,
    find_best_checkpoint,
    find_last_checkpoint,
)
from reaf_lightning.runs.layout import (
    BEST_FILENAME,
    DEFAULT_ROOT,
    RunDir,
    run_dir_for_seed,
    seed_name,
)
from reaf_lightning.runs.lock import lock_run_dir
from reaf_lightning.runs.protect import protect_run, smoke_reason
from reaf_lightning.runs.writer import LogConfigCallback
from reaf_lightning.training.callbacks import standard_callbacks
from reaf_lightning.training.console import quiet_lightning
from reaf_lightning.training.module import ImageClassifier
from reaf_lightning.training.saving import AtomicCheckpointIO, EveryEpochLastCheckpoint

__all__ = [
    "DEFAULT_ROOT_DIR",
    "PROG",
    "USAGE",
    "ReafLightningCLI",
    "main",
    "run",
]

DEFAULT_ROOT_DIR = DEFAULT_ROOT
PROG = "reaf-lightning"
DESCRIPTION = (
    "Train (fit) and evaluate (validate, test, predict) the REAF paper's networks, e.g. "
    "reaf-lightning fit --config configs/quickstart.yaml"
)
#: What ``<subcommand> --help`` shows as its usage line instead of all ~90 options.
USAGE = (
    "%(prog)s [-h] [-c CONFIG] [--print_config[=flags]] [--seed_everything SEED]\n"
    "       [--trainer.KEY VALUE] [--model.KEY VALUE] [--data CLASS] [--data.KEY VALUE]\n"
    "       [--checkpoint.KEY VALUE] [--ckpt_path PATH]"
)
EPILOG = (
    "Several --config files compose (later ones win), then flags; --print_config shows the "
    "result. --data.help CLASS lists a data module's settings (e.g. --data.help "
    "DigitsDataModule). Each option shows the first sentence of its documentation; Lightning's "
    "Trainer and ModelCheckpoint documentation has the rest."
)


class ReafLightningCLI(LightningCLI):
    """LightningCLI with the project's run directories, checkpoint policy and failure handling.

    Args:
        checkpoint_dirs: filled with the run's checkpoint directories once they
            are known, so that the caller can say where the last checkpoint is
            when the run is interrupted.
        locks: receives the run directory's lock (:func:`~reaf_lightning.runs.lock.lock_run_dir`),
            which the caller releases when the command ends.
        *args: as ``LightningCLI``.
        **kwargs: as ``LightningCLI``.
    """

    def __init__(
        self,
        *args: Any,
        checkpoint_dirs: list[str] | None = None,
        locks: list[Any] | None = None,
        **kwargs: Any,
    ):
        self.checkpoint_dirs = checkpoint_dirs if checkpoint_dirs is not None else []
        self.locks = locks if locks is not None else []
        self.ckpt_path_given: str | None = None
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse ``args`` (:func:`run` prepared them); a parse error is one line.

        ``args`` is always given, so Lightning's guard against mixing ``args`` with
        ``sys.argv`` has nothing to guard here.
        """
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parse(parser, args)
        config = self._of_subcommand(self.config, self.config.get("subcommand"))
        check_seed(config.get("seed_everything"))
        # Held back until before_instantiate_classes: between the two hooks LightningCLI
        # would torch.load the file and replace the configured model by the checkpoint's
        # hyperparameters (no switch turns that off); here the config decides.
        self.ckpt_path_given = config.get("ckpt_path")
        if self.ckpt_path_given is not None:
            config.ckpt_path = None

    def _of_subcommand(self, config: Namespace, subcommand: str | None = None) -> Namespace:
        """The part of a parsed or instantiated config that belongs to the subcommand."""
        subcommand = subcommand or getattr(self, "subcommand", None)
        return config[subcommand] if subcommand else config

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(EveryEpochLastCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc1",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": BEST_FILENAME,
                # overwrite instead of last-v1.ckpt: last.ckpt is always the newest state
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.add_argument(
            "--overwrite_run",
            type=bool,
            default=False,
            help="fit only: delete the run already in the run directory (its config, "
            "checkpoints, metrics.json, predictions, selectivity and W&B files) and train anew",
        )
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """Make the run directory (per seed) and put checkpoints and logger files in it."""
        config = self._of_subcommand(self.config)
        if self.ckpt_path_given is not None:
            config.ckpt_path = self.ckpt_path_given
        seed = config.seed_everything  # `true` was replaced by the seed Lightning chose
        seeded = seed is not False and seed is not None
        root = run_dir_for_seed(
            config.trainer.default_root_dir or DEFAULT_ROOT_DIR, seed if seeded else None
        )
        config.trainer.default_root_dir = str(root)
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(RunDir(root).checkpoint_dir)
        run = RunDir(root, Path(config.checkpoint.dirpath))
        if rank_zero_only.rank == 0:  # DDP's other ranks are this command's own processes
            self.locks.append(lock_run_dir(run, " ".join(sys.argv)))
            trainer = config.trainer
            smoke = smoke_reason(
                trainer.get("fast_dev_run"), trainer.get("max_epochs"), trainer.get("max_steps")
            )
            for note in protect_run(
                run,
                str(self.subcommand),
                overwrite=bool(config.get("overwrite_run")),
                resuming=config.get("ckpt_path") is not None,
                smoke=smoke,
            ):
                _info(note)
        stage = str(self.subcommand)
        for logger_class, init_args in _loggers(config.trainer.logger):
            wandb = issubclass(logger_class, WandbLogger)  # other loggers' names are folders
            if "save_dir" in init_args and init_args.save_dir is None:
                init_args.save_dir = str(run.wandb_save_dir(stage) if wandb else root)
            name = init_args.get("name")
            suffix = f"/{seed_name(seed)}" if seeded else ""
            if suffix and wandb and isinstance(name, str) and not name.endswith(suffix):
                if "group" in init_args and init_args.group is None:
                    init_args.group = name  # the seeds of one experiment form one group
                init_args.name = name = f"{name}{suffix}"
            if wandb and stage != "fit":
                # Its own W&B run in the experiment's group: never the fit's summary or history.
                init_args.name = f"{name}/{stage}" if isinstance(name, str) else stage
                if "job_type" in init_args:
                    init_args.job_type = stage

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a constructor's refusal of a setting is a config error.

        The constructors validate their arguments with ``ValueError``/``TypeError``
        (as torchvision's do) and Lightning's with ``MisconfigurationException``;
        their message is shown as it is. jsonargparse wraps some of them: the
        original is the innermost cause.
        """
        try:
            super().instantiate_classes()
        except ReafError:
            raise
        except (ValueError, TypeError, MisconfigurationException) as err:
            while err.__cause__ is not None:
                err = err.__cause__
            raise ConfigError(message_of(err)) from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Give the trainer :class:`AtomicCheckpointIO`, unless the config brings its own.

        A configured ``CheckpointIO`` plugin, a strategy object, or a sharded
        strategy (FSDP, DeepSpeed: their own checkpoint format) is left alone.
        """
        config = self._of_subcommand(self.config_init).trainer
        plugins = _as_list(config.get("plugins"))
        strategy = config.get("strategy", "auto")
        own = any(isinstance(p, CheckpointIO) for p in plugins) or isinstance(strategy, Strategy)
        sharded = isinstance(strategy, str) and strategy.startswith(("fsdp", "deepspeed"))
        if not own and not sharded:
            kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        if self.trainer.limit_train_batches == 0:
            raise ConfigError(
                "trainer.limit_train_batches=0 leaves no batch to train on; give a number of "
                "batches >= 1 or a fraction in (0, 1], or run `validate` to only evaluate"
            )
        self._prepare("fit")

    def before_validate(self) -> None:
        self._prepare("validate")

    def before_test(self) -> None:
        self._prepare("test")

    def before_predict(self) -> None:
        if self.trainer.limit_predict_batches == 0:
            old = RunDir(Path(self.trainer.default_root_dir)).predictions
            kept = f"; {old} is from an earlier predict" if old.exists() else ""
            raise ConfigError(
                "trainer.limit_predict_batches=0 predicts nothing, so no predictions.csv is "
                f"written{kept}; give a number of batches >= 1 or a fraction in (0, 1]"
            )
        self._prepare("predict")

    def _prepare(self, subcommand: str) -> None:
        """Check every output location, then resolve and check ``--ckpt_path``, before the work."""
        trainer = self.trainer
        dirs = [
            str(cb.dirpath)
            for cb in trainer.checkpoint_callbacks
            if isinstance(cb, ModelCheckpoint) and cb.dirpath
        ]
        self.checkpoint_dirs[:] = dirs
        outputs = [(trainer.default_root_dir, "run directory")]
        outputs += [(log.save_dir, f"{type(log).__name__} save_dir") for log in trainer.loggers]
        if subcommand == "fit":
            outputs += [(directory, "checkpoint directory") for directory in dirs]
        for directory, what in outputs:
            if directory is not None and "://" not in str(directory):  # remote: not checkable
                ensure_writable(directory, what)
        run = RunDir(Path(trainer.default_root_dir))
        for path in (run.predictions,) if subcommand == "predict" else (run.metrics,):
            if (path.exists() or path.is_symlink()) and not path.is_file():
                raise OutputError(
                    f"{path} is in the way: it is not a regular file (a directory, link or "
                    "device), so this run's output could not be written; move it away"
                )
        config = self.config_init[subcommand]
        ckpt_path = config.get("ckpt_path")
        weights_only = config.get("weights_only") is not False
        if ckpt_path in ("last", "best"):
            ckpt_path = self._find(ckpt_path, subcommand, dirs, weights_only)
            config["ckpt_path"] = ckpt_path
        if ckpt_path and "://" not in str(ckpt_path) and ckpt_path not in ("hpc", "registry"):
            check_checkpoint(
                ckpt_path, self.model, resume=subcommand == "fit", weights_only=weights_only
            )

    def _find(self, which: str, subcommand: str, dirs: list[str], weights_only: bool) -> str | None:
        """``last``/``best`` on disk. ``fit`` without a ``last`` starts a new run and says so."""
        if which == "last":
            found = find_last_checkpoint(dirs)
        else:
            found = find_best_checkpoint(dirs, weights_only)
        if found is not None:
            return str(found)
        where = ", ".join(dirs) or "(no checkpoint directory)"
        if subcommand == "fit" and which == "last":
            _info(f"--ckpt_path last: no checkpoint in {where} yet; starting a new run")
            return None
        raise CheckpointError(
            f"--ckpt_path {which}: no {which} checkpoint in {where}, so there is nothing to "
            f"{subcommand}; train first or pass a checkpoint file"
        )


def _loggers(value: Any) -> Iterator[tuple[type, Namespace]]:
    """``(class, init_args)`` of each ``class_path`` logger in a ``trainer.logger`` value."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, Namespace) and isinstance(item.get("init_args"), Namespace):
            module, _, name = item.class_path.rpartition(".")
            yield getattr(importlib.import_module(module), name), item.init_args


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@rank_zero_only
def _info(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def run(args: ArgsType = None, checkpoint_dirs: list[str] | None = None) -> ReafLightningCLI:
    """Parse ``args``, build model, data and trainer, run the subcommand; return the CLI.

    The run directory is locked for the whole call. Errors propagate as
    exceptions (:func:`main` turns them into exit statuses); tests and notebooks
    use the returned object (``cli.trainer``, ``cli.model``). ``args``: the command
    line without the program name (``None``: ``sys.argv[1:]``), or a dict of the config.
    """
    quiet_lightning()
    locks: list[Any] = []
    try:
        return _build_and_run(args, checkpoint_dirs, locks)
    finally:
        for lock in locks:
            lock.release()


def _build_and_run(
    args: ArgsType, checkpoint_dirs: list[str] | None, locks: list[Any]
) -> ReafLightningCLI:
    return ReafLightningCLI(
        ImageClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
        trainer_defaults={"callbacks": standard_callbacks()},
        parser_kwargs={
            # jsonargparse's own handler prints the whole usage (~100 lines) before the error
            "exit_on_error": os.environ.get(DEBUG_ENV) == "1",
            "prog": PROG,  # not sys.argv[0], which is the caller's (python, pytest, ...)
            "formatter_class": ShortHelpFormatter,
            "description": DESCRIPTION,
            **{
                subcommand: {"usage": USAGE, "epilog": EPILOG}
                for subcommand in LightningCLI.subcommands()
            },
        },
        auto_configure_optimizers=False,  # ImageClassifier configures its own (paper §IV)
        load_from_checkpoint_support=False,  # no model class stored in checkpoints either
        # --config quickstart: a packaged config, by name; every named file checked first
        args=args if isinstance(args, (dict, Namespace)) else prepare_arguments(command_line(args)),
        checkpoint_dirs=checkpoint_dirs,
        locks=locks,
    )


def main(args: ArgsType = None) -> NoReturn:
    """Entry point of ``reaf-lightning``; ``args`` as on the command line (``None``: ``sys.argv``).

    Exit statuses as in :mod:`reaf_lightning.errors`; ``SIGTERM`` saves
    ``last.ckpt`` and exits 143.
    """
    checkpoint_dirs: list[str] = []

    def body(argv: list[str]) -> None:
        try:
            run(argv, checkpoint_dirs)
        except SIGTERMException as err:
            _preempted(err)
            raise SystemExit(EXIT_PREEMPTED) from None

    def where_is_the_last_checkpoint() -> str:
        last = find_last_checkpoint(checkpoint_dirs)
        if last is None:
            return "no checkpoint was saved" if checkpoint_dirs else ""
        return f"the last checkpoint is {last}; resume with --ckpt_path last"

    run_main(PROG, body, args, where_is_the_last_checkpoint)


@rank_zero_only
def _preempted(err: SIGTERMException) -> None:
    path = getattr(err, "reaf_checkpoint", None)
    if path is None:
        _info("stopped by SIGTERM; no checkpoint was saved by this run")
        return
    epoch, step = err.reaf_progress  # type: ignore[attr-defined]
    _info(
        f"preempted by SIGTERM at epoch {epoch}, global step {step}; saved {path}; "
        "resume with --ckpt_path last"
    )


if __name__ == "__main__":
    main()
