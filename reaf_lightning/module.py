"""Image classification LightningModule for the paper's experiments (SPEC.md §4).

:class:`ImageClassifier` trains any network of the model registry
(:func:`reaf_lightning.models.create_model`), chosen by name plus keyword
arguments, with the paper's recipes: SGD with momentum and weight decay,
cross-entropy, and either the CIFAR-100 schedule (linear per-iteration
warm-up, then x0.2 at fixed epochs) or the ImageNet schedule (x0.1 every 30
epochs); cosine is available as an option. The recipe *values* live in the
YAML files under ``configs/recipes``; the defaults here are deliberately
neutral (constant lr, no decay, no warm-up).

It reports what the paper reports: top-1/top-5 accuracy and error on the
validation and test splits (``val/acc1``, ``val/err1``, ...), and the model's
complexity (#params, MACs) once as hyperparameters.

Numerical faults *(ours, issue 6)*: a non-finite training loss either stops
the run with :class:`NonFiniteTrainingError` (``nan_policy="stop"``, default)
or skips that batch (``"skip"``: no update, BatchNorm statistics restored),
and a checkpoint with non-finite weights is never written, so the last good
``last.ckpt`` survives a diverged run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from reaf_lightning.models import create_model
from reaf_lightning.models.complexity import count_macs, count_parameters

__all__ = ["ImageClassifier", "NonFiniteTrainingError", "lr_factor"]

Schedule = Literal["constant", "multistep", "step", "cosine"]
SCHEDULES = ("constant", "multistep", "step", "cosine")
NanPolicy = Literal["stop", "skip"]
NAN_POLICIES = ("stop", "skip")


class NonFiniteTrainingError(FloatingPointError):
    """The training loss or the weights became NaN/inf; the run stops before saving them."""


def lr_factor(
    step: int,
    steps_per_epoch: int,
    total_steps: int,
    schedule: Schedule,
    warmup_epochs: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    step_size: int = 30,
) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based).

    The factor is ``warm-up * decay``. Warm-up is linear per iteration over
    ``warmup_epochs`` epochs and reaches 1 on its last step (step ``s`` uses
    ``(s + 1) / warmup_steps``), as the CIFAR recipe's per-iteration warm-up.
    Decay is evaluated at the integer epoch ``step // steps_per_epoch`` for the
    step schedules, so the lr changes exactly at epoch boundaries like
    ``MultiStepLR``/``StepLR`` stepped per epoch, and continuously for cosine
    (which anneals to 0 over the steps after warm-up).

    Args:
        step: optimizer steps taken so far.
        steps_per_epoch: optimizer steps per epoch (after gradient accumulation).
        total_steps: optimizer steps of the whole run (used by ``cosine``).
        schedule: ``constant``, ``multistep`` (x``gamma`` at each epoch in
            ``milestones``), ``step`` (x``gamma`` every ``step_size`` epochs) or
            ``cosine``.
        warmup_epochs: length of the linear warm-up, in epochs (may be fractional).
        milestones: epochs at which ``multistep`` multiplies by ``gamma``.
        gamma: decay factor of the step schedules.
        step_size: period in epochs of the ``step`` schedule.
    """
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    epoch = step // steps_per_epoch
    if schedule == "constant":
        decay = 1.0
    elif schedule == "multistep":
        decay = gamma ** sum(1 for m in milestones if epoch >= m)
    elif schedule == "step":
        decay = gamma ** (epoch // step_size)
    elif schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, max(0.0, (step - warmup_steps) / span))
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"schedule={schedule!r} is not one of {', '.join(SCHEDULES)}")
    return warm * decay


class ImageClassifier(pl.LightningModule):
    """A registry network trained and evaluated as an image classifier.

    The network is built from its registry name and keyword arguments (not
    passed in as an object), so ``save_hyperparameters`` records everything
    needed to rebuild it and ``ImageClassifier.load_from_checkpoint(path)``
    works without any other code or config.

    Learning rate under DDP: ``lr`` is the rate for a *global* batch of
    ``lr_reference_batch_size`` images. When that is set, the rate actually
    used is ``lr * global_batch / lr_reference_batch_size`` (the linear
    scaling rule), where ``global_batch = per-device batch * devices *
    num_nodes * accumulate_grad_batches``. So a recipe keeps its numbers
    whatever the number of GPUs; with ``lr_reference_batch_size=None`` the lr
    is used unchanged.

    Args:
        arch: registry name, e.g. ``"reaf_resnet50"`` (see ``list_models()``).
        arch_kwargs: keyword arguments of the network, e.g. ``{"stem": "cifar",
            "width": 72, "out_width": 72, "reaf": "4-3-4"}``.
        num_classes: classes of the dataset; the CLI links it from the data module.
        lr: peak learning rate (after warm-up), for ``lr_reference_batch_size``.
        lr_reference_batch_size: global batch size ``lr`` refers to, or ``None``
            to use ``lr`` as is.
        momentum: SGD momentum.
        nesterov: use Nesterov momentum.
        weight_decay: L2 weight decay.
        decay_norm_and_bias: if ``False``, one-dimensional parameters (norm
            scales/shifts and biases) get no weight decay.
        schedule: ``constant``, ``multistep``, ``step`` or ``cosine`` (see :func:`lr_factor`).
        milestones: epochs of the ``multistep`` decays.
        gamma: decay factor of ``multistep``/``step``.
        step_size: period (epochs) of ``step``.
        warmup_epochs: linear per-iteration warm-up length in epochs.
        label_smoothing: cross-entropy label smoothing in [0, 1).
        nan_policy: what a NaN/inf training loss does. ``"stop"``: raise
            :class:`NonFiniteTrainingError` naming the epoch and step, before
            the bad batch touches the weights. ``"skip"``: leave weights,
            optimizer state and BatchNorm statistics as they were, warn, and go
            on (the step still counts for the lr schedule). Under DDP the
            decision is taken jointly: a bad batch on any rank affects all.
            Checking costs one scalar device-to-host copy per step.
        max_consecutive_skips: with ``"skip"``, stop anyway after this many
            consecutive non-finite batches (the weights have most likely
            diverged, and skipping would hide it).
    """

    def __init__(
        self,
        arch: str,
        arch_kwargs: dict[str, Any] | None = None,
        num_classes: int = 1000,
        lr: float = 0.1,
        lr_reference_batch_size: int | None = None,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        decay_norm_and_bias: bool = True,
        schedule: Schedule = "constant",
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        step_size: int = 30,
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
        nan_policy: NanPolicy = "stop",
        max_consecutive_skips: int = 10,
    ) -> None:
        super().__init__()
        _check_hparams(
            lr=lr,
            lr_reference_batch_size=lr_reference_batch_size,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            schedule=schedule,
            milestones=milestones,
            gamma=gamma,
            step_size=step_size,
            warmup_epochs=warmup_epochs,
            label_smoothing=label_smoothing,
        )
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy={nan_policy!r} is not one of {', '.join(NAN_POLICIES)}")
        if isinstance(max_consecutive_skips, bool) or int(max_consecutive_skips) < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {max_consecutive_skips!r}")
        if "num_classes" in (arch_kwargs or {}):
            raise ValueError(
                f"arch_kwargs.num_classes={arch_kwargs['num_classes']!r}: num_classes comes from "
                "the data module (model.num_classes), remove it from arch_kwargs"
            )
        self.save_hyperparameters()
        self.net = create_model(arch, num_classes=num_classes, **(arch_kwargs or {}))
        top5 = min(5, num_classes)  # top-5 of a <5-class problem is the trivial 100 %
        # One metric object per split: their states must never mix (a sanity-check
        # validation must not leak into the first training epoch's numbers, etc.).
        self.train_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_loss = MeanMetric()
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_loss = MeanMetric()
        self.test_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self._complexity_logged = False
        self._consecutive_skips = 0
        self.skipped_batches = 0  # non-finite batches skipped by this process so far

    # -- forward and loss --------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Class logits of a batch of images."""
        return self.net(x)

    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Shared by every split: logits, mean cross-entropy and targets of one batch."""
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        return loss, logits, y

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        skip = self.hparams.nan_policy == "skip"
        # BatchNorm updates its running statistics in the forward pass, before the loss
        # is known; "skip" must undo that too, so the buffers are copied first (small).
        saved = [b.detach().clone() for b in self.net.buffers()] if skip else None
        loss, logits, y = self.model_step(batch)
        if not self._all_finite(loss):
            return self._nonfinite_loss(loss, batch_idx, saved)
        self._consecutive_skips = 0
        self.train_acc1(logits, y)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    # -- numerical faults ----------------------------------------------------------------------
    def _all_finite(self, loss: Tensor) -> bool:
        """Is the loss finite on every process? (One collective under DDP.)"""
        finite = bool(torch.isfinite(loss.detach()).all())
        if self._trainer is None:
            return finite
        return bool(self.trainer.strategy.reduce_boolean_decision(finite, all=True))

    def _where(self, batch_idx: int) -> str:
        if self._trainer is None:
            return f"batch {batch_idx}"
        return (
            f"epoch {self.trainer.current_epoch}, global step {self.trainer.global_step} "
            f"(batch {batch_idx} of the epoch)"
        )

    def _last_checkpoint_note(self) -> str:
        callback = self._trainer.checkpoint_callback if self._trainer is not None else None
        last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        if last:
            return f"the last good checkpoint {last} is kept"
        return "no checkpoint had been saved yet"

    def _nonfinite_loss(self, loss: Tensor, batch_idx: int, saved: list[Tensor] | None) -> None:
        """Stop, or skip the batch (restoring the buffers) under ``nan_policy="skip"``."""
        value = loss.detach().float().cpu().item()
        where = self._where(batch_idx)
        advice = "lower model.lr, add warm-up or gradient clipping"
        if saved is None:
            raise NonFiniteTrainingError(
                f"non-finite training loss ({value}) at {where}; training stopped "
                f"(model.nan_policy=stop) and {self._last_checkpoint_note()}; {advice}, or set "
                "model.nan_policy=skip to skip such batches"
            )
        with torch.no_grad():
            for buffer, copy in zip(self.net.buffers(), saved, strict=True):
                buffer.copy_(copy)
        self._consecutive_skips += 1
        self.skipped_batches += 1
        limit = self.hparams.max_consecutive_skips
        if self._consecutive_skips >= limit:
            raise NonFiniteTrainingError(
                f"{limit} consecutive non-finite training losses (last {value} at {where}): the "
                f"model has most likely diverged; training stopped and "
                f"{self._last_checkpoint_note()}; {advice}"
            )
        rank_zero_warn(
            f"skipping a batch with non-finite training loss ({value}) at {where}; "
            f"{self.skipped_batches} batch(es) skipped so far (model.nan_policy=skip)"
        )
        self.log("train/skipped_batches", float(self.skipped_batches), on_step=True, on_epoch=False)
        return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to write a checkpoint whose weights or statistics are not finite.

        Raising here happens before anything is written, so the previous
        ``last.ckpt`` (and the best checkpoint) stay as they were.
        """
        bad = [
            k
            for k, v in checkpoint["state_dict"].items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())
        ]
        if bad:
            more = f" and {len(bad) - 1} other tensor(s)" if len(bad) > 1 else ""
            where = ""
            if self._trainer is not None:
                trainer = self.trainer
                where = f" at epoch {trainer.current_epoch}, global step {trainer.global_step}"
            raise NonFiniteTrainingError(
                f"non-finite values in {bad[0]}{more}{where}: not saving this checkpoint, and "
                f"{self._last_checkpoint_note()}; lower model.lr, add warm-up or gradient clipping"
            )

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_loss, self.val_acc1, self.val_acc5)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_loss, self.test_acc1, self.test_acc5)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Class probabilities; accepts ``(images, labels)`` batches or bare images."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=-1)

    def _eval_step(
        self,
        batch: tuple[Tensor, Tensor],
        loss_metric: MeanMetric,
        acc1: MulticlassAccuracy,
        acc5: MulticlassAccuracy,
    ) -> None:
        loss, logits, y = self.model_step(batch)
        # Weighted by batch size, so the epoch loss is the mean over images even when
        # the last batch is short; the metrics all-reduce their sums under DDP.
        loss_metric.update(loss, weight=y.numel())
        acc1.update(logits, y)
        acc5.update(logits, y)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val", self.val_loss, self.val_acc1, self.val_acc5)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", self.test_loss, self.test_acc1, self.test_acc5)

    def _log_eval(
        self,
        split: str,
        loss_metric: MeanMetric,
        acc1: MulticlassAccuracy,
        acc5: MulticlassAccuracy,
    ) -> None:
        """Log loss, top-1/top-5 accuracy and error (fractions in [0, 1]) and reset."""
        a1, a5 = acc1.compute(), acc5.compute()  # already synchronised across processes
        values = {
            f"{split}/loss": loss_metric.compute(),
            f"{split}/acc1": a1,
            f"{split}/acc5": a5,
            f"{split}/err1": 1.0 - a1,
            f"{split}/err5": 1.0 - a5,
        }
        for name, value in values.items():
            # The values are identical on every rank; sync_dist only averages equal numbers
            # and keeps Lightning from warning about unsynchronised epoch-level logging.
            show = name.endswith(("/loss", "/acc1"))
            self.log(name, value, prog_bar=show, sync_dist=True)
        for metric in (loss_metric, acc1, acc5):
            metric.reset()

    # -- complexity --------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._log_complexity_once(batch)

    def on_validation_batch_start(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._log_complexity_once(batch)

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._log_complexity_once(batch)

    def _log_complexity_once(self, batch: Any) -> None:
        """Log #params and MACs for the image size actually fed, once per process."""
        if self._complexity_logged:
            return
        self._complexity_logged = True
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if self.loggers:
            self._log_complexity(tuple(x.shape[1:]))

    @rank_zero_only
    def _log_complexity(self, input_size: tuple[int, ...]) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(self.complexity(input_size))

    def complexity(self, input_size: tuple[int, ...]) -> dict[str, float]:
        """#params and multiply-accumulates of one image of shape ``input_size``.

        MACs are counted on a copy built on the ``meta`` device, which costs no
        compute and leaves the trained network (and its BN statistics) untouched.
        """
        with torch.device("meta"):
            meta_net = create_model(
                self.hparams.arch,
                num_classes=self.hparams.num_classes,
                **(self.hparams.arch_kwargs or {}),
            )
        params = count_parameters(self.net)
        macs = count_macs(meta_net, tuple(input_size))
        return {
            "complexity/params": params,
            "complexity/params_M": params / 1e6,
            "complexity/macs": macs,
            "complexity/gmacs": macs / 1e9,
            "complexity/input_size": list(input_size),
        }

    # -- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """SGD (optionally without decay on 1-D parameters) + a per-step LambdaLR."""
        hp = self.hparams
        trainer = self.trainer
        if trainer.train_dataloader is None:  # the schedule needs the epoch length
            trainer.fit_loop.setup_data()
        num_batches = trainer.num_training_batches
        if not math.isfinite(num_batches):
            raise ValueError(
                "the lr schedule needs a train dataloader of known length; got an iterable "
                "without __len__"
            )
        total_steps = trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            if hp.schedule == "cosine":
                raise ValueError("schedule='cosine' needs trainer.max_epochs or trainer.max_steps")
            total_steps = 0  # only cosine uses it
        steps_per_epoch = max(1, math.ceil(num_batches / trainer.accumulate_grad_batches))
        lr = hp.lr * self._lr_scale()

        decay, no_decay = [], []
        for p in self.net.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 and not hp.decay_norm_and_bias else decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=hp.momentum, nesterov=hp.nesterov)

        factor = partial(
            lr_factor,
            steps_per_epoch=steps_per_epoch,
            total_steps=int(total_steps),
            schedule=hp.schedule,
            warmup_epochs=hp.warmup_epochs,
            milestones=tuple(hp.milestones),
            gamma=hp.gamma,
            step_size=hp.step_size,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def _lr_scale(self) -> float:
        """``global_batch / lr_reference_batch_size`` (1 when no reference is set)."""
        reference = self.hparams.lr_reference_batch_size
        if reference is None:
            return 1.0
        loader = self.trainer.train_dataloader
        per_device = getattr(loader, "batch_size", None)
        if per_device is None:
            raise ValueError(
                "lr_reference_batch_size is set but the train DataLoader has no batch_size "
                "(custom batch sampler?); set lr_reference_batch_size: null and give the lr "
                "directly"
            )
        trainer = self.trainer
        global_batch = per_device * trainer.world_size * trainer.accumulate_grad_batches
        return global_batch / reference


def _check_hparams(
    *,
    lr: float,
    lr_reference_batch_size: int | None,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    schedule: str,
    milestones: Sequence[int],
    gamma: float,
    step_size: int,
    warmup_epochs: float,
    label_smoothing: float,
) -> None:
    """Reject bad optimisation settings at construction, with the offending value named."""
    checks = [
        (lr > 0, f"lr must be > 0, got {lr!r}"),
        (
            lr_reference_batch_size is None or lr_reference_batch_size > 0,
            "lr_reference_batch_size must be a positive int or null, "
            f"got {lr_reference_batch_size!r}",
        ),
        (0 <= momentum < 1, f"momentum must be in [0, 1), got {momentum!r}"),
        (not nesterov or momentum > 0, "nesterov=True needs momentum > 0, got momentum=0"),
        (weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay!r}"),
        (schedule in SCHEDULES, f"schedule={schedule!r} is not one of {', '.join(SCHEDULES)}"),
        (
            list(milestones) == sorted(milestones) and all(m > 0 for m in milestones),
            f"milestones must be increasing positive epochs, got {list(milestones)!r}",
        ),
        (0 < gamma <= 1, f"gamma must be in (0, 1], got {gamma!r}"),
        (step_size > 0, f"step_size must be > 0, got {step_size!r}"),
        (warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {warmup_epochs!r}"),
        (0 <= label_smoothing < 1, f"label_smoothing must be in [0, 1), got {label_smoothing!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
