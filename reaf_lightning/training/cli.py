"""``reaf-lightning``: the LightningCLI that runs every experiment of the paper (paper §IV).

``reaf-lightning fit --config configs/quickstart.yaml`` trains; ``validate``,
``test`` and ``predict`` evaluate. Several ``--config`` files compose (later
ones override), which is how a shared recipe and a per-row file combine.

What this adds to Lightning's CLI, all through its public hooks but one
(:class:`~reaf_lightning.training.private_api.ConfigDecidesTheModel`); not part
of the paper, the reasons are in ``docs/reliability.md``:

* the model is always :class:`~reaf_lightning.ImageClassifier`; the data module
  is any ``LightningDataModule`` by class path, its ``num_classes`` linked into
  the model; every run gets :func:`~reaf_lightning.training.callbacks.standard_callbacks`
  and two configurable callbacks, the ``checkpoint:`` group (``last.ckpt`` every
  epoch) and the ``non_finite:`` group (what a NaN/inf loss does);
* the **run directory** is ``trainer.default_root_dir``, with an integer
  ``seed_everything: N`` made ``<default_root_dir>/seed<N>`` (one directory, and
  one W&B run ``<name>/seed<N>``, per seed); it receives ``config.yaml``,
  ``checkpoints/`` and the loggers' files, and every output location is checked
  writable before the work;
* ``--ckpt_path`` (a file, ``last`` or ``best``, found on disk) is resolved once,
  must hold the configured network, and a resumed ``fit`` must keep the optimiser
  and schedule settings (:func:`~reaf_lightning.runs.checkpoint.check_checkpoint`);
  the file is read once, by that check, and handed to Lightning's restore; a
  resume that trains nothing (the run already ended) says so;
* checkpoints are written atomically
  (:class:`~reaf_lightning.training.saving.AtomicCheckpointIO`), ``SIGTERM`` saves
  ``last.ckpt`` and exits 143, Ctrl-C exits 130 naming the last checkpoint, and
  every error follows :mod:`reaf_lightning.errors`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
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
    ReafError,
    message_of,
)
from reaf_lightning.io import check_seed, ensure_writable, import_class
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
from reaf_lightning.runs.writer import LogConfigCallback, claim_logger_folders
from reaf_lightning.training.callbacks import NonFiniteLossPolicy, standard_callbacks
from reaf_lightning.training.console import quiet_lightning
from reaf_lightning.training.module import ImageClassifier
from reaf_lightning.training.private_api import ConfigDecidesTheModel
from reaf_lightning.training.saving import AtomicCheckpointIO, EveryEpochLastCheckpoint

__all__ = [
    "PROG",
    "USAGE",
    "ReafLightningCLI",
    "main",
    "run",
]

PROG = "reaf-lightning"
DESCRIPTION = (
    "Train (fit) and evaluate (validate, test, predict) the REAF paper's networks, e.g. "
    "reaf-lightning fit --config configs/quickstart.yaml"
)
#: What ``<subcommand> --help`` shows as its usage line instead of all ~90 options.
USAGE = (
    "%(prog)s [-h] [-c CONFIG] [--print_config[=flags]] [--seed_everything SEED]\n"
    "       [--trainer.KEY VALUE] [--model.KEY VALUE] [--data CLASS] [--data.KEY VALUE]\n"
    "       [--checkpoint.KEY VALUE] [--non_finite.KEY VALUE] [--ckpt_path PATH]"
)
EPILOG = (
    "Several --config files compose (later ones win), then flags; --print_config shows the "
    "result. --data.help CLASS lists a data module's settings (e.g. --data.help "
    "DigitsDataModule). Each option shows the first sentence of its documentation; Lightning's "
    "Trainer and ModelCheckpoint documentation has the rest."
)


class ReafLightningCLI(ConfigDecidesTheModel, LightningCLI):
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
        self.resumed: tuple[str, int] | None = None  # (checkpoint, its global step) of a fit
        self.smoke: str | None = None  # why the command writes nothing (a smoke run), if so
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Sequence[str]) -> None:
        """Parse ``args`` (:func:`run` prepared them); a parse error is one line."""
        self.config = parse(parser, args)
        check_seed(self.config[self.config.subcommand].get("seed_everything"))

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
        parser.add_lightning_class_args(NonFiniteLossPolicy, "non_finite")
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
        stage = str(self.subcommand)
        config = self.config[stage]
        seed = config.seed_everything  # `true` was replaced by the seed Lightning chose
        seeded = seed is not False and seed is not None
        root = run_dir_for_seed(
            config.trainer.default_root_dir or DEFAULT_ROOT, seed if seeded else None
        )
        config.trainer.default_root_dir = str(root)
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(RunDir(root).checkpoint_dir)
        run = RunDir(root, Path(config.checkpoint.dirpath))
        trainer = config.trainer
        self.smoke = smoke_reason(
            trainer.get("fast_dev_run"), trainer.get("max_epochs"), trainer.get("max_steps")
        )
        if self.smoke and stage == "fit" and not trainer.get("fast_dev_run"):
            trainer.logger = False  # no logs either (fast_dev_run turns them off itself)
        if rank_zero_only.rank == 0:  # DDP's other ranks are this command's own processes
            self.locks.append(lock_run_dir(run, " ".join(sys.argv)))
            for note in protect_run(
                run,
                stage,
                overwrite=bool(config.get("overwrite_run")),
                resuming=config.get("ckpt_path") is not None,
                smoke=self.smoke,
            ):
                _info(note)
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
        """The trainer, with :func:`standard_callbacks` and :class:`AtomicCheckpointIO`.

        A configured ``CheckpointIO`` plugin, a strategy object, or a sharded
        strategy (FSDP, DeepSpeed: their own checkpoint format) keeps its own
        checkpoint IO.
        """
        config = self.config_init[self.subcommand]
        seed = config.seed_everything
        callbacks = standard_callbacks(None if isinstance(seed, bool) else seed)
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": callbacks}
        plugins = config.trainer.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        strategy = config.trainer.get("strategy", "auto")
        own = any(isinstance(p, CheckpointIO) for p in plugins) or isinstance(strategy, Strategy)
        sharded = isinstance(strategy, str) and strategy.startswith(("fsdp", "deepspeed"))
        if not own and not sharded:
            io = AtomicCheckpointIO(config.trainer.default_root_dir)  # lists what it writes
            kwargs.setdefault("plugins", [*plugins, io])
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        if self.trainer.limit_train_batches == 0:
            raise ConfigError(
                "trainer.limit_train_batches=0 leaves no batch to train on; give a number of "
                "batches >= 1 or a fraction in (0, 1], or run `validate` to only evaluate"
            )
        self._prepare("fit")

    def after_fit(self) -> None:
        """A resume from a checkpoint that had already reached the end of training says so."""
        trainer = self.trainer
        if self.resumed is None or trainer.global_step != self.resumed[1]:
            return
        _info(
            f"--ckpt_path {self.resumed[0]} had already reached the end of training (global "
            f"step {trainer.global_step}; trainer.max_epochs={trainer.max_epochs}, "
            f"trainer.max_steps={trainer.max_steps}), so nothing was trained; raise "
            "trainer.max_epochs or trainer.max_steps to train on"
        )

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
                for lock in self.locks:  # an empty folder it made goes again when it ends
                    lock.creating(directory)
                ensure_writable(directory, what)
        self._checkpoint(subcommand, dirs)
        if trainer.is_global_zero and not self.smoke:
            claim_logger_folders(trainer, subcommand)  # before the loggers start writing

    def _checkpoint(self, subcommand: str, dirs: list[str]) -> None:
        """Resolve ``--ckpt_path`` (``last``/``best`` on disk), check it, read it once.

        ``fit`` without a ``last`` starts a new run and says so. The checked
        checkpoint is handed to the trainer's :class:`AtomicCheckpointIO`, so that
        Lightning's restore does not read the file again.
        """
        config = self.config_init[subcommand]
        given, weights_only = config.get("ckpt_path"), config.get("weights_only") is not False
        path = given
        if given == "last":
            path = find_last_checkpoint(dirs)
        elif given == "best":
            path = find_best_checkpoint(dirs, weights_only)
        if path is None and given is not None:
            where = ", ".join(dirs) or "(no checkpoint directory)"
            if subcommand != "fit" or given != "last":
                raise CheckpointError(
                    f"--ckpt_path {given}: no {given} checkpoint in {where}, so there is "
                    f"nothing to {subcommand}; train first or pass a checkpoint file"
                )
            _info(f"--ckpt_path last: no checkpoint in {where} yet; starting a new run")
        path = None if path is None else str(path)
        config["ckpt_path"] = path
        if path is None or "://" in path or path in ("hpc", "registry"):
            return  # nothing to restore, or a location Lightning resolves (not checkable here)
        checkpoint = check_checkpoint(
            path, self.model, resume=subcommand == "fit", weights_only=weights_only
        )
        io = self.trainer.strategy.checkpoint_io
        if isinstance(io, AtomicCheckpointIO):
            io.hand_over(path, checkpoint)
        if subcommand == "fit":
            named = path if given == path else f"{given} ({path})"
            self.resumed = (named, checkpoint["global_step"])


def _loggers(value: Any) -> Iterator[tuple[type, Namespace]]:
    """``(class, init_args)`` of each ``class_path`` logger in a ``trainer.logger`` value."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, Namespace) and isinstance(item.get("init_args"), Namespace):
            yield import_class(item.class_path, "logger"), item.init_args


@rank_zero_only
def _info(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def run(
    args: Sequence[str] | None = None, checkpoint_dirs: list[str] | None = None
) -> ReafLightningCLI:
    """Parse ``args``, build model, data and trainer, run the subcommand; return the CLI.

    The run directory is locked for the whole call. Errors propagate as
    exceptions (:func:`main` turns them into exit statuses); tests and notebooks
    use the returned :class:`ReafLightningCLI` (``cli.trainer``, ``cli.model``).
    ``args``: the command line without the program name (``None``: ``sys.argv[1:]``).
    """
    quiet_lightning()
    locks: list[Any] = []
    try:
        return ReafLightningCLI(
            ImageClassifier,
            LightningDataModule,
            subclass_mode_data=True,
            save_config_callback=LogConfigCallback,
            save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
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
            args=prepare_arguments(command_line(args)),
            checkpoint_dirs=checkpoint_dirs,
            locks=locks,
        )
    finally:
        for lock in locks:
            lock.release()


def main(args: Sequence[str] | None = None) -> NoReturn:
    """Entry point of ``reaf-lightning``; ``args`` as on the command line (``None``: ``sys.argv``).

    Exit statuses as in :mod:`reaf_lightning.errors`; ``SIGTERM`` saves
    ``last.ckpt`` and exits 143.
    """
    checkpoint_dirs: list[str] = []

    def body(argv: list[str]) -> None:
        try:
            run(argv, checkpoint_dirs)
        except SIGTERMException as err:  # PreemptionCheckpoint says what it saved
            nothing = "stopped by SIGTERM; no checkpoint was saved by this run"
            _info(getattr(err, "reaf_note", nothing))
            raise SystemExit(EXIT_PREEMPTED) from None

    def where_is_the_last_checkpoint() -> str:
        last = find_last_checkpoint(checkpoint_dirs)
        if last is None:
            return "no checkpoint was saved" if checkpoint_dirs else ""
        return f"the last checkpoint is {last}; resume with --ckpt_path last"

    run_main(PROG, body, args, where_is_the_last_checkpoint)


if __name__ == "__main__":
    main()
