"""ImageClassifier (reaf_lightning/module.py): schedules, metrics, optimiser groups, checkpoints.

Every expected value comes from an independent reference: PyTorch's own
schedulers stepped by hand, a plain loop over the evaluation set, parameter
sets found by module type, the complexity functions applied to a real model.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.model_summary import ModelSummary
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reaf_lightning import ImageClassifier
from reaf_lightning.data import DigitsDataModule
from reaf_lightning.models import create_model
from reaf_lightning.models.complexity import count_macs, count_parameters
from reaf_lightning.training.callbacks import LogComplexity
from reaf_lightning.training.module import lr_factor

NUM_CLASSES = 10


# Most tests here train without validation on purpose (limit_val_batches=0, no val loader).
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings(
        "ignore:You defined a `validation_step` but have no `val_dataloader`:UserWarning"
    ),
]


def _loader(n: int, batch_size: int, seed: int = 0, size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def _trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    return pl.Trainer(**{**defaults, **kwargs})


class _RecordLR(Callback):
    """The learning rate each optimizer step is taken with."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _reference_lrs(
    schedule: str, base: float, spe: int, epochs: int, warmup_epochs: int, **kw
) -> list[float]:
    """Per-step lrs from PyTorch's schedulers, stepped the way the recipes describe.

    Warm-up (hand-written, linear per iteration, reaching ``base`` on its last step),
    then MultiStepLR / StepLR stepped once per epoch, or CosineAnnealingLR per step.
    """
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base)
    warm = warmup_epochs * spe
    lrs = []
    if schedule in ("multistep", "step"):
        if schedule == "multistep":
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, kw["milestones"], kw["gamma"])
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, kw["step_size"], kw["gamma"])
        for epoch in range(epochs):
            for i in range(spe):
                step = epoch * spe + i
                lrs.append(base * (step + 1) / warm if step < warm else sched.get_last_lr()[0])
            opt.step()
            sched.step()
    else:  # cosine over the steps after warm-up
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * spe - warm)
        for step in range(epochs * spe):
            if step < warm:
                lrs.append(base * (step + 1) / warm)
            else:
                lrs.append(sched.get_last_lr()[0])
                opt.step()
                sched.step()
    return lrs


@pytest.mark.parametrize(
    "schedule, kw",
    [
        ("multistep", {"milestones": [2, 4], "gamma": 0.2}),
        ("step", {"step_size": 2, "gamma": 0.1}),
        ("cosine", {}),
    ],
)
def test_lr_per_step_matches_torch_schedulers(schedule, kw):
    epochs, spe, base = 5, 3, 0.1
    model = ImageClassifier(
        "test_resnet", num_classes=NUM_CLASSES, lr=base, schedule=schedule, warmup_epochs=1, **kw
    )
    record = _RecordLR()
    _trainer(max_epochs=epochs, callbacks=[record], limit_val_batches=0).fit(
        model, _loader(spe * 4, 4)
    )
    expected = _reference_lrs(schedule, base, spe, epochs, warmup_epochs=1, **kw)
    assert record.lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_lr_factor_without_warmup_starts_at_full_rate():
    # The ImageNet recipe has no warm-up: the very first step runs at the full lr.
    assert lr_factor(0, 10, 100, "step", warmup_epochs=0, step_size=3, gamma=0.1) == 1.0
    assert lr_factor(30, 10, 100, "step", warmup_epochs=0, step_size=3, gamma=0.1) == pytest.approx(
        0.1
    )


def test_lr_scales_linearly_with_global_batch():
    # per-device 4 x accumulate 2 = global 8; lr 0.4 is for a global batch of 32.
    model = ImageClassifier(
        "test_resnet", num_classes=NUM_CLASSES, lr=0.4, lr_reference_batch_size=32
    )
    record = _RecordLR()
    _trainer(max_steps=1, accumulate_grad_batches=2, callbacks=[record], limit_val_batches=0).fit(
        model, _loader(16, 4)
    )
    assert record.lrs[0] == pytest.approx(0.4 * 8 / 32)


def _plain_metrics(model: ImageClassifier, loader: DataLoader) -> dict[str, float]:
    """Top-1/top-5 accuracy and mean loss over the whole set, image by image."""
    model.eval()
    correct1 = correct5 = 0
    loss_sum, n = 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            for row, target in zip(logits, y):
                order = sorted(range(NUM_CLASSES), key=lambda c: -row[c].item())
                correct1 += int(order[0] == target.item())
                correct5 += int(target.item() in order[:5])
                loss_sum += F.cross_entropy(row[None], target[None]).item()
                n += 1
    return {"acc1": correct1 / n, "acc5": correct5 / n, "loss": loss_sum / n}


def test_eval_metrics_match_a_plain_loop():
    torch.manual_seed(0)
    model = ImageClassifier("test_resnet", num_classes=NUM_CLASSES)
    _trainer(max_steps=3, limit_val_batches=0).fit(model, _loader(12, 4, seed=1))
    loader = _loader(10, 4, seed=2)  # 4 + 4 + 2: the short last batch must weigh 2, not 4
    ref = _plain_metrics(model, loader)
    val = _trainer().validate(model, loader, verbose=False)[0]
    test = _trainer().test(model, loader, verbose=False)[0]
    for split, out in (("val", val), ("test", test)):
        assert out[f"{split}/acc1"] == pytest.approx(ref["acc1"], abs=1e-6)
        assert out[f"{split}/acc5"] == pytest.approx(ref["acc5"], abs=1e-6)
        assert out[f"{split}/err1"] == pytest.approx(1 - ref["acc1"], abs=1e-6)
        assert out[f"{split}/err5"] == pytest.approx(1 - ref["acc5"], abs=1e-6)
        assert out[f"{split}/loss"] == pytest.approx(ref["loss"], rel=1e-5)


def test_label_smoothing_reaches_the_loss():
    torch.manual_seed(0)
    model = ImageClassifier("test_resnet", num_classes=NUM_CLASSES, label_smoothing=0.1)
    x, y = next(iter(_loader(4, 4)))
    loss, logits, _ = model.model_step((x, y))
    assert loss.item() == pytest.approx(
        F.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-6
    )
    assert loss.item() != pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


@pytest.mark.parametrize("arch", ["test_resnet", "test_reaf_plus_resnet"])
def test_no_weight_decay_on_norm_and_bias(arch):
    model = ImageClassifier(
        arch, num_classes=NUM_CLASSES, weight_decay=5e-4, decay_norm_and_bias=False
    )
    trainer = _trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, _loader(8, 4))
    decay, no_decay = trainer.optimizers[0].param_groups
    expected_no_decay = set()
    for module in model.net.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            expected_no_decay |= {id(module.weight), id(module.bias)}
        elif getattr(module, "bias", None) is not None and isinstance(module.bias, nn.Parameter):
            expected_no_decay.add(id(module.bias))
    assert {id(p) for p in no_decay["params"]} == expected_no_decay
    assert {id(p) for p in decay["params"]} == {
        id(p) for p in model.net.parameters()
    } - expected_no_decay
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (5e-4, 0.0)


def test_decay_everything_by_default_is_one_group():
    model = ImageClassifier("test_resnet", num_classes=NUM_CLASSES, weight_decay=1e-4)
    trainer = _trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, _loader(8, 4))
    (group,) = trainer.optimizers[0].param_groups
    assert len(group["params"]) == len(list(model.net.parameters()))


def test_checkpoint_reloads_with_load_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = ImageClassifier(
        "test_reaf_resnet",
        {"reaf": "4-3-4"},
        num_classes=NUM_CLASSES,
        schedule="multistep",
        milestones=[3],
        gamma=0.2,
    )
    trainer = _trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, _loader(8, 4))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = ImageClassifier.load_from_checkpoint(path)
    assert dict(loaded.hparams) == dict(model.hparams)
    x = torch.randn(3, 3, 8, 8)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


class _CaptureLogger(Logger):
    """A logger that keeps every ``log_hyperparams`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.hparams_calls: list[dict] = []

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.hparams_calls.append(dict(params))

    def log_metrics(self, metrics, step=None) -> None:
        pass


def test_complexity_logged_once_for_the_fed_image_size():
    logger = _CaptureLogger()
    model = ImageClassifier("test_reaf_resnet", num_classes=NUM_CLASSES)
    _trainer(logger=logger, max_epochs=2, limit_val_batches=1, callbacks=[LogComplexity()]).fit(
        model, _loader(8, 4, size=16), _loader(4, 4, size=16)
    )
    calls = [c for c in logger.hparams_calls if "complexity/macs" in c]
    assert len(calls) == 1
    reference = create_model("test_reaf_resnet", num_classes=NUM_CLASSES)
    assert calls[0]["complexity/params"] == count_parameters(reference)
    assert calls[0]["complexity/macs"] == count_macs(reference, (3, 16, 16))
    assert calls[0]["complexity/input_size"] == [3, 16, 16]


def test_model_summary_counts_the_flops_of_the_data_image_size():
    # Lightning's summary runs example_input_array, sized from the data module; its FLOP
    # counter counts 2 per multiply-accumulate of convolutions and linear layers.
    model = ImageClassifier("test_resnet", num_classes=NUM_CLASSES)
    data = DigitsDataModule(batch_size=16, image_size=12, num_workers=0)
    _trainer(max_steps=1, limit_val_batches=0).fit(model, datamodule=data)
    reference = create_model("test_resnet", num_classes=NUM_CLASSES)
    assert ModelSummary(model).total_flops == 2 * count_macs(reference, (3, 12, 12))


def test_predict_returns_class_probabilities():
    model = ImageClassifier("test_resnet", num_classes=NUM_CLASSES)
    out = _trainer().predict(model, _loader(6, 4))
    probs = torch.cat(out)
    assert probs.shape == (6, NUM_CLASSES)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(6))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"momentum": 1.5}, "momentum must be in [0, 1), got 1.5"),
        ({"schedule": "poly"}, "schedule='poly' is not one of"),
        ({"milestones": [120, 60]}, "milestones must be increasing positive epochs, got [120, 60]"),
        ({"gamma": 2.0}, "gamma must be in (0, 1], got 2.0"),
        ({"warmup_epochs": -1}, "warmup_epochs must be >= 0, got -1"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in [0, 1), got 1.0"),
        ({"lr_reference_batch_size": 0}, "lr_reference_batch_size must be a positive int or null"),
        ({"nesterov": True, "momentum": 0.0}, "nesterov=True needs momentum > 0"),
        ({"arch_kwargs": {"num_classes": 5}}, "num_classes comes from the data"),
    ],
)
def test_bad_settings_are_clear_value_errors(kwargs, message):
    with pytest.raises(ValueError) as err:
        ImageClassifier("test_resnet", **kwargs)
    assert message in str(err.value)


def test_unknown_arch_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet5'.*reaf_resnet50"):
        ImageClassifier("resnet5")


@pytest.mark.slow
def test_importing_models_does_not_import_lightning():
    # reaf_lightning/__init__ must stay light: models and layers never need Lightning.
    import subprocess
    import sys

    code = "import sys, reaf_lightning.models; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
