"""Checkpoints that are never half-written, and the rule for when a run may use one.

Not part of the paper: this keeps the paper's long runs (200 CIFAR-100 epochs,
100 ImageNet epochs, paper §IV) from losing work or silently mixing two
experiments.

* :class:`AtomicCheckpointIO` writes every checkpoint through
  :func:`reaf_lightning.io.atomic_outputs` (temporary file in the checkpoint
  directory, ``fsync``, rename). Lightning's default writes through a temporary
  file in the system temp dir; when that is another file system than the
  checkpoints (local ``/tmp``, checkpoints on NFS/Lustre) the last step is a
  *copy into the final name*, and a failure during it leaves a truncated
  ``last.ckpt`` where the good one was.
* :class:`EveryEpochLastCheckpoint` (the CLI's ``checkpoint:`` group, with no
  version counter, so no ``last-vN.ckpt`` ever appears) restores what ``save_last=True`` meant
  before Lightning 2.6: ``last.ckpt`` is rewritten at *every* checkpointing
  point. Since 2.6, ``ModelCheckpoint`` writes ``last.ckpt`` only when a top-k
  checkpoint is written at the same step, so with ``monitor="val/acc1",
  save_top_k=1`` an epoch that does not improve the accuracy would leave
  ``last.ckpt`` behind and ``--ckpt_path last`` would silently redo every epoch
  since the best one.
* :class:`PreemptionCheckpoint`: cluster schedulers stop jobs with ``SIGTERM``.
  Lightning turns it into a ``SIGTERMException`` at the next batch boundary
  but saves nothing; this callback saves ``last.ckpt`` there, and
  ``reaf-lightning`` exits with status 143.
* :func:`check_checkpoint` is the one policy for ``--ckpt_path`` (a file,
  ``last`` or ``best`` alike): the file must be a Lightning checkpoint of the
  network the configuration builds, and a resumed ``fit`` must not change the
  optimiser or schedule settings, which the restored optimiser and scheduler
  state would otherwise silently override.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from fsspec.utils import get_protocol
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from .errors import CheckpointError, NumericalError
from .io import atomic_outputs, load_checkpoint
from .rundir import RunDir

__all__ = [
    "NUMERICAL_ADVICE",
    "AtomicCheckpointIO",
    "EveryEpochLastCheckpoint",
    "FiniteCheckpointGuard",
    "PreemptionCheckpoint",
    "NETWORK_KEYS",
    "RESUME_MAY_CHANGE",
    "check_checkpoint",
    "describe_mismatch",
    "find_best_checkpoint",
    "find_last_checkpoint",
    "kept_checkpoint",
]

#: What to try after a numerical fault, for the messages of a stopped run.
NUMERICAL_ADVICE = "lower model.lr, add warm-up or gradient clipping"
#: Keys every Lightning checkpoint has (``Trainer.save_checkpoint``).
LIGHTNING_KEYS = ("state_dict", "epoch", "global_step", "pytorch-lightning_version")
#: The model settings that decide which network a checkpoint holds.
NETWORK_KEYS = ("arch", "arch_kwargs", "num_classes")
#: Model settings a resumed ``fit`` may change: nothing of them is restored from the
#: checkpoint, so the configured value is the one used (and logged). Every other
#: setting (lr, momentum, weight decay, schedule, warm-up ...) must stay as it was.
RESUME_MAY_CHANGE = ("label_smoothing", "nan_policy", "max_consecutive_skips")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are all-or-nothing on local file systems.

    A reader (``--ckpt_path last``, ``reaf-analysis``) sees either the previous
    complete file or the new complete file, whatever happens during the save
    (exception, ``SIGKILL``, full disk, node crash after the rename). Remote
    URLs (``s3://``, ``gs://``) go to Lightning's implementation: an
    object-store upload is already atomic.
    """

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str | os.PathLike[str],
        storage_options: Any | None = None,
    ) -> None:
        if storage_options is not None or get_protocol(str(path)) not in ("file", "local"):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        with atomic_outputs([str(path).removeprefix("file://")]) as (temporary,):
            torch.save(checkpoint, temporary)


class EveryEpochLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` follows every epoch, improved or not.

    Same arguments as Lightning's ``ModelCheckpoint``. After the parent's own
    logic at the end of validation (or of the training epoch, whichever the
    parent checkpoints at), ``last.ckpt`` is written unless the parent already
    wrote a checkpoint at this global step. ``save_last="link"`` is left to the
    parent.

    Private API that remains, and why: Lightning has no public way to write
    ``last.ckpt`` outside its top-k logic, so this subclass calls
    ``ModelCheckpoint._save_last_checkpoint`` with the parent's own checks
    (``_should_skip_saving_checkpoint``, ``_should_save_on_train_epoch_end``,
    ``_monitor_candidates``). The alternative, a second ``ModelCheckpoint``
    without monitor, would write every epoch's weights twice and give
    ``--ckpt_path last`` two candidates. The CLI's tests on resuming catch a
    change of these methods.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Lightning 2.6 writes ``last.ckpt`` here even for ``fast_dev_run``; a smoke run (or
        a step already saved) is skipped by the parent's own check."""
        if not self._should_skip_saving_checkpoint(trainer):
            super().on_train_end(trainer, pl_module)

    def _ensure_last(self, trainer: pl.Trainer) -> None:
        if self.save_last is not True or self._should_skip_saving_checkpoint(trainer):
            return  # skipped: disabled, not fitting, sanity check, or already saved at this step
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class PreemptionCheckpoint(Callback):
    """On ``SIGTERM`` during ``fit``, save ``<checkpoint dir>/last.ckpt`` before the process exits.

    The file goes where ``--ckpt_path last`` looks: the directory of the
    trainer's ``ModelCheckpoint`` (``<default_root_dir>/checkpoints`` in the
    CLI), name ``last.ckpt``. It is written by the trainer's checkpoint IO, so
    atomically with :class:`~reaf_lightning.checkpointing.AtomicCheckpointIO`.
    Every rank takes part (saving is collective under DDP; Lightning
    broadcasts the signal so all ranks stop at the same batch).

    The path and the progress are attached to the exception
    (``reaf_checkpoint``, ``reaf_progress``) for the CLI's exit message.
    """

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.sanity_checking or trainer.fast_dev_run:  # nothing of a run to keep
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        progress = (trainer.current_epoch, trainer.global_step)
        rank_zero_info(f"SIGTERM: saved {path} at epoch {progress[0]}, global step {progress[1]}")
        exception.reaf_checkpoint = str(path)  # type: ignore[attr-defined]
        exception.reaf_progress = progress  # type: ignore[attr-defined]

    @staticmethod
    def checkpoint_path(trainer: pl.Trainer) -> Path:
        """The run's ``last.ckpt``, in the directory of its ``ModelCheckpoint`` (the run
        layout's ``checkpoints/`` unless configured elsewhere)."""
        callback = trainer.checkpoint_callback
        dirpath = callback.dirpath if isinstance(callback, ModelCheckpoint) else None
        return RunDir(Path(trainer.default_root_dir), dirpath and Path(dirpath)).last_checkpoint


def kept_checkpoint(trainer: pl.Trainer) -> str:
    """Where the last good checkpoint is, for the messages of a stopped run."""
    callback = trainer.checkpoint_callback
    last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return (
        f"the last good checkpoint {last} is kept" if last else "no checkpoint had been saved yet"
    )


class FiniteCheckpointGuard(Callback):
    """Refuse to write a checkpoint whose weights or statistics are not finite.

    A diverged update can leave NaN weights while the loss of that step was
    still finite. Raising :class:`~reaf_lightning.errors.NumericalError` while
    the checkpoint is being assembled happens before anything is written, so the
    previous ``last.ckpt`` and the best checkpoint stay as they were.
    """

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        bad = [
            name
            for name, value in checkpoint["state_dict"].items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())
        ]
        if bad:
            more = f" and {len(bad) - 1} other tensor(s)" if len(bad) > 1 else ""
            raise NumericalError(
                f"non-finite values in {bad[0]}{more} at epoch {trainer.current_epoch}, "
                f"global step {trainer.global_step}: not saving this checkpoint, and "
                f"{kept_checkpoint(trainer)}; {NUMERICAL_ADVICE}"
            )


def read_lightning_checkpoint(path: str | os.PathLike[str], weights_only: bool) -> dict[str, Any]:
    """Load ``path`` (safely unless ``weights_only`` is ``False``) and check it is from Lightning.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    content = load_checkpoint(path, weights_only=weights_only)
    if not isinstance(content, Mapping):
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (it holds a {type(content).__name__}, "
            f"not a dict with {', '.join(LIGHTNING_KEYS)})"
        )
    missing = [k for k in LIGHTNING_KEYS if k not in content]
    if missing:
        bare = content and all(isinstance(v, torch.Tensor) for v in content.values())
        hint = "; it looks like a bare state_dict (load it with load_state_dict)" if bare else ""
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint: missing {', '.join(missing)}{hint}"
        )
    state = content["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of tensors")
    return dict(content)


def check_checkpoint(
    path: str | os.PathLike[str], model: nn.Module, *, resume: bool, weights_only: bool = True
) -> dict[str, Any]:
    """Refuse a checkpoint that this run could only use by silently changing the config.

    Args:
        path: the checkpoint file.
        model: the ``ImageClassifier`` the configuration built (its ``hparams``
            are the configured settings).
        resume: the checkpoint resumes ``fit`` (optimizer state and settings
            are restored), rather than being evaluated.
        weights_only: ``torch.load``'s safe mode (``--weights_only false`` turns it off).

    Returns:
        The loaded checkpoint.

    Raises:
        NumericalError: the weights or statistics hold NaN or inf (exit status 3).
        CheckpointError: not a Lightning checkpoint; weights only while resuming;
            another network than configured (both named); for ``resume``, a
            changed optimiser/schedule setting (each named, old and new value).
    """
    content = read_lightning_checkpoint(path, weights_only)
    if resume and not content.get("optimizer_states"):
        raise CheckpointError(
            f"{path} holds only the model weights (saved with save_weights_only), so it cannot "
            "resume training; use it with validate/test/predict, or resume from a full checkpoint"
        )
    saved = dict(content.get("hyper_parameters") or {})
    current = dict(getattr(model, "hparams", {}))
    if any(_plain(saved.get(k)) != _plain(current.get(k)) for k in NETWORK_KEYS if k in saved):
        raise CheckpointError(
            f"{path} holds a {_network(saved)} network, but the configuration builds a "
            f"{_network(current)}; pass the config the checkpoint was trained with"
        )
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatch = describe_mismatch(
        expected, {k: tuple(v.shape) for k, v in content["state_dict"].items()}
    )
    if mismatch:
        raise CheckpointError(f"{path} does not fit the configured {_network(current)}: {mismatch}")
    bad = [
        name
        for name, value in content["state_dict"].items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]
    if bad:
        more = f" and {len(bad) - 1} other tensor(s)" if len(bad) > 1 else ""
        raise NumericalError(
            f"{path} holds non-finite values (NaN or inf) in {bad[0]}{more}; its results would "
            "be meaningless: use an earlier checkpoint of the run"
        )
    if resume:
        changed = [
            f"model.{k}: {saved[k]!r} -> {current[k]!r}"
            for k in saved
            if k in current
            and k not in NETWORK_KEYS + RESUME_MAY_CHANGE
            and _plain(saved[k]) != _plain(current[k])
        ]
        if changed:
            raise CheckpointError(
                f"resuming {path} with changed settings ({'; '.join(changed)}): the optimiser "
                "and schedule state restored from the checkpoint would keep the old values; "
                "keep them, or start a new run in another trainer.default_root_dir"
            )
    return content


def _plain(value: Any) -> Any:
    """Compare settings as YAML would write them (tuples as lists, no ``arch_kwargs`` = ``{}``)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _network(hparams: Mapping[str, Any]) -> str:
    kwargs = ", ".join(f"{k}: {v}" for k, v in (hparams.get("arch_kwargs") or {}).items())
    return f"{hparams.get('arch')} {{{kwargs}}} ({hparams.get('num_classes')} classes)"


def describe_mismatch(expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]]) -> str:
    """One line on how state_dict shapes ``got`` differ from ``expected`` ("" if they fit).

    Counts missing/unexpected keys and shape mismatches with an example of each,
    instead of ``load_state_dict``'s multi-screen message. Shared by the training
    CLI and ``reaf-analysis``.
    """
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and got[k] != expected[k]]
    details = []
    if missing:
        details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        details.append(
            f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint {got[k]} vs model {expected[k]})"
        )
    return "; ".join(details)


def find_last_checkpoint(dirs: Iterable[str | os.PathLike[str]]) -> Path | None:
    """The ``last.ckpt`` in ``dirs`` (what ``--ckpt_path last`` means); the newest if several.

    Only ``last.ckpt`` counts: the CLI's ``ModelCheckpoint`` has no version
    counter, so ``last.ckpt`` is always the newest state and no ``last-vN.ckpt``
    is written.
    """
    found = [RunDir(Path(d), Path(d)).last_checkpoint for d in dirs]
    found = [p for p in found if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def find_best_checkpoint(
    dirs: Iterable[str | os.PathLike[str]], weights_only: bool = True
) -> Path | None:
    """The best checkpoint on disk, as the ``ModelCheckpoint`` of the newest ``last`` recorded it.

    In the process that trained, Lightning's ``ckpt_path="best"`` is the
    callback's ``best_model_path``; a new process reads the same record from
    the checkpoint's callback state. The file is looked up by name next to
    ``last.ckpt`` first, so a moved or copied run directory finds its own.
    """
    dirs = [Path(d) for d in dirs]
    last = find_last_checkpoint(dirs)
    if last is None:
        return None
    states = read_lightning_checkpoint(last, weights_only).get("callbacks") or {}
    for state in states.values():
        recorded = state.get("best_model_path") if isinstance(state, Mapping) else None
        if not recorded:
            continue
        for candidate in (last.parent / Path(recorded).name, Path(recorded)):
            if candidate.is_file():
                return candidate
    return None
