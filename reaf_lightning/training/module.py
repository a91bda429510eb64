"""The image-classification LightningModule of the paper's experiments (paper §IV).

:class:`ImageClassifier` has the usual four parts: a network of the model
registry built by name, cross-entropy, SGD with the paper's learning-rate
schedules, and one ``torchmetrics.MetricCollection`` per split reporting what
the paper reports (top-1/top-5 accuracy and error). The schedules:

* ``multistep`` — x``gamma`` at fixed epochs: the paper's CIFAR-100 recipe
  (x0.2 at epochs 60, 120, 160; paper §IV-A);
* ``step`` — x``gamma`` every ``step_size`` epochs: the paper's ImageNet
  recipe (x0.1 every 30 epochs; paper §IV-B);
* ``cosine`` — ours, used by the quick start;
* each after an optional linear per-iteration warm-up (ours: the paper gives
  none; the CIFAR-100 recipe uses one epoch, as the public CIFAR code it
  resembles).

The recipes' values live in ``configs/recipes/``; the defaults here are
neutral (constant lr, no decay, no warm-up). Everything that is not the model
itself — the numerical-fault policy, the finite-checkpoint check, complexity
logging, prediction files — is a callback in :mod:`reaf_lightning.training.callbacks`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from reaf_lightning.conversion.sources import build_network
from reaf_lightning.errors import ConfigError
from reaf_lightning.training.private_api import forget_train_dataloader

__all__ = ["ImageClassifier", "lr_factor"]

Schedule = Literal["constant", "multistep", "step", "cosine"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


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
    """Learning-rate multiplier for optimizer step ``step`` (0-based): warm-up x decay.

    Warm-up is linear per iteration over ``warmup_epochs`` epochs and reaches 1
    on its last step (step ``s`` uses ``(s + 1) / warmup_steps``). The step
    schedules decay at the integer epoch ``step // steps_per_epoch``, so the lr
    changes exactly at epoch boundaries, like ``MultiStepLR``/``StepLR`` stepped
    per epoch; cosine anneals to 0 over the steps after warm-up.

    Args:
        step: optimizer steps taken so far.
        steps_per_epoch: optimizer steps per epoch (after gradient accumulation).
        total_steps: optimizer steps of the whole run (used by ``cosine``).
        schedule: ``constant``, ``multistep``, ``step`` or ``cosine``.
        warmup_epochs: length of the linear warm-up, in epochs (may be fractional).
        milestones: epochs at which ``multistep`` multiplies by ``gamma``.
        gamma: decay factor of the step schedules.
        step_size: period in epochs of the ``step`` schedule.
    """
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    epoch = step // steps_per_epoch
    decay = 1.0  # constant (ImageClassifier refused any other name)
    if schedule == "multistep":
        decay = gamma ** sum(1 for m in milestones if epoch >= m)
    elif schedule == "step":
        decay = gamma ** (epoch // step_size)
    elif schedule == "cosine":
        progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return warm * decay


def _accuracy(num_classes: int, k: int) -> MulticlassAccuracy:
    # top-5 of a <5-class problem is the trivial 100 %; micro = fraction of images
    return MulticlassAccuracy(num_classes, top_k=min(k, num_classes), average="micro")


class ImageClassifier(pl.LightningModule):
    """A registry network trained and evaluated as an image classifier.

    The network is built from its registry name and keyword arguments (not
    passed in as an object), so ``save_hyperparameters`` records everything
    needed to rebuild it and ``ImageClassifier.load_from_checkpoint(path)``
    works without any other code or config.

    Learning rate under DDP *(ours: the linear scaling rule of Goyal et al.
    2017, for hardware other than the paper's)*: ``lr`` is the rate for a
    global batch of ``lr_reference_batch_size`` images; the rate used is
    ``lr * global_batch / lr_reference_batch_size`` with ``global_batch =
    per-device batch * world size * accumulate_grad_batches``. With
    ``lr_reference_batch_size=None`` the lr is used unchanged.

    Args:
        arch: registry name, e.g. ``"reaf_resnet50"`` (see ``list_models()``).
        arch_kwargs: keyword arguments of the network, e.g. ``{"stem": "cifar",
            "width": 72, "out_width": 72, "reaf": "4-3-4"}``.
        num_classes: classes of the dataset; the CLI links it from the data module.
        lr: peak learning rate (after warm-up), for ``lr_reference_batch_size``.
        lr_reference_batch_size: global batch size ``lr`` refers to, or ``None``.
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
    ) -> None:
        super().__init__()
        _check_settings(dict(locals()))
        self.save_hyperparameters()
        self.net = build_network(arch, num_classes=num_classes, **(arch_kwargs or {}))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # One collection per split: their states must never mix (a sanity-check
        # validation must not leak into the first training epoch's numbers).
        self.train_metrics = MetricCollection({"acc1": _accuracy(num_classes, 1)}, prefix="train/")
        self.val_metrics = MetricCollection(
            {
                "acc1": _accuracy(num_classes, 1),
                "acc5": _accuracy(num_classes, 5),
                "loss": MeanMetric(),
            },
            prefix="val/",
        )
        self.test_metrics = self.val_metrics.clone(prefix="test/")

    def setup(self, stage: str) -> None:
        """Give Lightning's model summary an input of the data's size, so it counts FLOPs."""
        image_size = getattr(self.trainer.datamodule, "image_size", None)
        if isinstance(image_size, int):
            self.example_input_array = torch.zeros(1, 3, image_size, image_size)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of a batch of images."""
        return self.net(x)

    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Shared by every split: mean cross-entropy, logits and targets of one batch."""
        x, y = batch[0], batch[1]
        logits = self(x)
        return self.criterion(logits, y), logits, y

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logits, y = self.model_step(batch)
        self.train_metrics.update(preds=logits.detach(), target=y)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._update(self.val_metrics, batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._update(self.test_metrics, batch)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Class probabilities; accepts ``(images, labels)`` batches or bare images."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=-1)

    def _update(self, metrics: MetricCollection, batch: tuple[Tensor, Tensor]) -> None:
        loss, logits, y = self.model_step(batch)
        # Each metric takes the keyword arguments of its own update(); the loss is
        # weighted by the batch size, so a short last batch counts per image.
        metrics.update(preds=logits, target=y, value=loss, weight=y.numel())

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch(self.test_metrics)

    def _log_epoch(self, metrics: MetricCollection) -> None:
        """Log loss, top-1/top-5 accuracy and error (fractions in [0, 1]), then reset."""
        values = metrics.compute()  # already summed over processes
        for k in (1, 5):
            values[f"{metrics.prefix}err{k}"] = 1.0 - values[f"{metrics.prefix}acc{k}"]
        for name, value in values.items():
            # sync_dist only averages identical numbers; it keeps Lightning from warning
            # about unsynchronised epoch-level logging under DDP.
            self.log(name, value, prog_bar=name.endswith(("/loss", "/acc1")), sync_dist=True)
        metrics.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        """SGD (optionally without decay on 1-D parameters) + a per-step ``LambdaLR``."""
        hp, trainer = self.hparams, self.trainer
        if trainer.train_dataloader is None:  # the schedule needs the epoch length
            trainer.fit_loop.setup_data()
        total_steps = trainer.estimated_stepping_batches
        if not math.isfinite(trainer.num_training_batches):
            raise ConfigError(
                "the lr schedule needs a train dataloader of known length; got an iterable "
                "without __len__"
            )
        if not math.isfinite(total_steps):
            if hp.schedule == "cosine":
                raise ConfigError("schedule='cosine' needs trainer.max_epochs or trainer.max_steps")
            total_steps = 0  # only cosine uses it
        steps_per_epoch = max(
            1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        )

        decay, no_decay = [], []
        for p in self.net.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 and not hp.decay_norm_and_bias else decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        lr = hp.lr * self._lr_scale()
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
        # Counting the steps (and the lr scaling) made Lightning build the train loader before
        # a checkpoint is restored; dropped, it is built again after the restore, at the saved
        # position (a fit resumed mid-epoch keeps the epoch's data order).
        forget_train_dataloader(trainer)
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
        # Under DDP Lightning rebuilds a StatefulDataLoader around its (stateful) batch
        # sampler, so the batch size is the batch sampler's.
        per_device = getattr(loader, "batch_size", None) or getattr(
            getattr(loader, "batch_sampler", None), "batch_size", None
        )
        if per_device is None:
            raise ConfigError(
                "lr_reference_batch_size is set but the train DataLoader has no batch_size "
                "(custom batch sampler?); set lr_reference_batch_size: null and give the lr "
                "directly"
            )
        trainer = self.trainer
        return per_device * trainer.world_size * trainer.accumulate_grad_batches / reference


def _check_settings(s: dict[str, Any]) -> None:
    """Reject bad settings at construction, naming the value and what is valid."""
    ref = s["lr_reference_batch_size"]
    milestones = list(s["milestones"])
    checks = [
        (s["lr"] > 0, f"lr must be > 0, got {s['lr']!r}"),
        (
            ref is None or ref > 0,
            f"lr_reference_batch_size must be a positive int or null, got {ref!r}",
        ),
        (0 <= s["momentum"] < 1, f"momentum must be in [0, 1), got {s['momentum']!r}"),
        (not s["nesterov"] or s["momentum"] > 0, "nesterov=True needs momentum > 0, got 0"),
        (s["weight_decay"] >= 0, f"weight_decay must be >= 0, got {s['weight_decay']!r}"),
        (
            s["schedule"] in SCHEDULES,
            f"schedule={s['schedule']!r} is not one of {', '.join(SCHEDULES)}",
        ),
        (
            milestones == sorted(milestones) and all(m > 0 for m in milestones),
            f"milestones must be increasing positive epochs, got {milestones!r}",
        ),
        (0 < s["gamma"] <= 1, f"gamma must be in (0, 1], got {s['gamma']!r}"),
        (s["step_size"] > 0, f"step_size must be > 0, got {s['step_size']!r}"),
        (s["warmup_epochs"] >= 0, f"warmup_epochs must be >= 0, got {s['warmup_epochs']!r}"),
        (
            0 <= s["label_smoothing"] < 1,
            f"label_smoothing must be in [0, 1), got {s['label_smoothing']!r}",
        ),
        (
            "num_classes" not in (s["arch_kwargs"] or {}),
            "arch_kwargs.num_classes: num_classes comes from the data module "
            "(model.num_classes), remove it from arch_kwargs",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
