"""Every private attribute of a third-party library that the package uses, and why.

Not part of the paper. The package uses the public APIs of Lightning, jsonargparse,
torch and wandb; where none does the job, the private attribute is reached here and
nowhere else, each with the reason no public way exists, so that a library upgrade
has one place to look. ``tests/training/test_private_api.py`` checks each attribute
itself (that it exists and does what is used here), so an upgrade that changes one
fails there by name, not somewhere in a training run.

The module imports no third-party library at run time (the objects come from the
caller), so ``reaf_lightning.analysis``'s selectivity maths may use it without
importing Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch import Tensor

__all__ = [
    "ConfigDecidesTheModel",
    "forget_train_dataloader",
    "rerun_interrupted_validation",
    "save_last_checkpoint",
    "saves_on_train_epoch_end",
    "skips_saving",
    "tensor_version",
]


# -- LightningCLI ---------------------------------------------------------------------------
class ConfigDecidesTheModel:
    """A ``LightningCLI`` mixin: ``--ckpt_path`` never replaces the configured model.

    Between ``parse_arguments`` and ``before_instantiate_classes``, LightningCLI
    (2.6) ``torch.load``-s a ``--ckpt_path`` file and overwrites the configured
    ``model`` with the checkpoint's hyperparameters, in its private
    ``_parse_ckpt_path``; no argument turns that off
    (``load_from_checkpoint_support=False`` does not). ``reaf-lightning`` builds what
    the config says and refuses a checkpoint of another network instead
    (:func:`~reaf_lightning.runs.checkpoint.check_checkpoint`), and reads the file
    once, with the safe loader, after the model is built. The public alternative,
    taking ``ckpt_path`` out of the parsed config in ``parse_arguments`` and putting it
    back in ``before_instantiate_classes``, hides the value between two hooks.
    """

    def _parse_ckpt_path(self) -> None:
        """Nothing: the config, not the checkpoint, decides what is built."""


# -- ModelCheckpoint: last.ckpt after every epoch -------------------------------------------
# Since Lightning 2.6, ModelCheckpoint(save_last=True) writes last.ckpt only together with a
# new top-k checkpoint; no public setting writes it every epoch, and a second ModelCheckpoint
# without monitor would write every epoch's weights twice and give `--ckpt_path last` two
# candidates. EveryEpochLastCheckpoint (training.saving) therefore asks the parent's own
# private checks when and how to save.
def saves_on_train_epoch_end(callback: ModelCheckpoint, trainer: pl.Trainer) -> bool:
    """Whether ``callback`` checkpoints at the end of the training epoch (else after
    validation): ``ModelCheckpoint._should_save_on_train_epoch_end``, which resolves
    ``save_on_train_epoch_end=None`` from the trainer's validation settings."""
    return callback._should_save_on_train_epoch_end(trainer)


def skips_saving(callback: ModelCheckpoint, trainer: pl.Trainer) -> bool:
    """Whether ``callback`` saves nothing now (``fast_dev_run``, not fitting, sanity
    check, or already saved at this global step):
    ``ModelCheckpoint._should_skip_saving_checkpoint``."""
    return callback._should_skip_saving_checkpoint(trainer)


def save_last_checkpoint(callback: ModelCheckpoint, trainer: pl.Trainer) -> None:
    """Write ``callback``'s ``last.ckpt`` now, as ``ModelCheckpoint`` does after a top-k save
    (file name, ``last_model_path``, the step it saved at, the loggers' notification):
    ``ModelCheckpoint._save_last_checkpoint`` with ``_monitor_candidates``."""
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


# -- the fit loop's train DataLoader --------------------------------------------------------
def forget_train_dataloader(trainer: pl.Trainer) -> None:
    """Drop the train DataLoader the fit loop built early, so that it builds it again later.

    ``Trainer.estimated_stepping_batches`` (needed by the lr schedule in
    ``configure_optimizers``) builds the train loader before a checkpoint is
    restored; the fit loop then keeps that loader and never hands it the position
    saved in the checkpoint, so a fit resumed mid-epoch would restart the epoch's data
    order. Setting ``fit_loop._combined_loader`` to ``None`` makes the loop build it
    again after the restore, at the saved position; Lightning has no public call for it.
    """
    trainer.fit_loop._combined_loader = None


# -- the fit loop's saved progress: a validation interrupted by SIGTERM ---------------------
def rerun_interrupted_validation(checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint saved while the fit's validation ran redo that validation, whole.

    Lightning checks for ``SIGTERM`` between two validation batches, and restores a
    checkpoint saved there as if the validation had ended: the training epoch loop
    fast-forwards the validation progress, the epoch's validation never runs, and a
    resumed fit ends with the previous epoch's metrics and no check of its best
    checkpoint. It re-runs an evaluation only when the checkpoint was saved with a
    batch started but not processed (``_EvaluationLoop.restarted_mid_evaluation``).
    The validation loop's saved progress,
    ``checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]``, is
    rewritten to that state with no batch of this validation completed, so the
    resumed fit first runs the whole validation, then goes on where the uninterrupted
    run went on (the same lr-schedule step and logger step, which Lightning takes
    after the validation). No public API saves or restores mid-validation progress.
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    earlier = progress["total"]["completed"] - progress["current"]["completed"]
    progress["total"] = {
        "ready": earlier + 1,
        "started": earlier + 1,
        "processed": earlier,
        "completed": earlier,
    }
    progress["current"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
    progress["is_last_batch"] = False


# -- torch ----------------------------------------------------------------------------------
def tensor_version(tensor: Tensor) -> int:
    """``tensor._version``: torch's counter of in-place changes, which autograd uses to
    refuse a tensor changed after it was saved. No public API exposes it; the
    selectivity layer check uses it to tell that an activation's output was changed
    in place after it was known to be non-negative."""
    return tensor._version
