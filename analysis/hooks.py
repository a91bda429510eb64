"""Class selectivity of a network's layers over a data set (paper §IV-E).

Forward hooks read the output of named modules (a ResNet stage ``layer1`` ..
``layer4`` or ``avgpool``, or any dotted name such as ``features.17`` of
MobileNetV2), reduce it per sample (the spatial mean per channel, as the paper
does), and :class:`reaf_lightning.analysis.streaming.ClassSums` adds it up per class.
:func:`compute_selectivity` is the one-call entry point; the Lightning callback
(:mod:`reaf_lightning.analysis.training_callback`) uses the same :class:`LayerCapture` inside the
validation loop.

Choices that are ours (the paper is silent):

* A module that runs more than once per forward pass (torchvision's Bottleneck
  calls its single ``relu`` module three times) is refused instead of
  silently mixing activations.
* The network runs in eval mode under ``torch.no_grad``; each submodule's
  train/eval flag is restored and the hooks removed afterwards, also on errors.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from reaf_lightning.errors import ConfigError, DataError, NumericalError

from .nonnegative import check_measurable_layers
from .selectivity import ClassActivationStats
from .streaming import ClassSums, ShardPadding, distributed_sampler, should_sync

__all__ = [
    "DEFAULT_LAYERS",
    "REDUCTIONS",
    "LayerCapture",
    "TopOne",
    "compute_class_means",
    "compute_selectivity",
    "raise_on_negative",
    "resolve_layers",
    "split_batch",
]

#: The layers of the paper's Figures 2-4 (torchvision ResNet module names, paper §IV-E).
DEFAULT_LAYERS: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4", "avgpool")
#: Spatial reductions: ``mean`` = one unit per channel (the paper), ``none`` = every (c, h, w).
REDUCTIONS: tuple[str, ...] = ("mean", "none")


def resolve_layers(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Look up the modules to hook by (dotted) name; ``None`` means :data:`DEFAULT_LAYERS`.

    Raises:
        ConfigError: an empty list, duplicates, or a name that is not a
            submodule (the message lists the valid top-level names).
    """
    model = _unwrap(model)
    names = list(DEFAULT_LAYERS if layers is None else layers)
    if not names:
        raise ConfigError("layers must name at least one module, got an empty list")
    blank = [n for n in names if not isinstance(n, str) or not n.strip()]
    if blank:
        raise ConfigError(
            f"layers {names} holds an empty name; name a module such as 'layer1' (an empty "
            "name would mean the whole network, whose output is the logits)"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"layers contains duplicates: {duplicates}")
    modules: dict[str, nn.Module] = {}
    for name in names:
        try:
            modules[name] = model.get_submodule(name)
        except AttributeError:
            valid = [n for n, _ in model.named_children()]
            raise ConfigError(
                f"unknown layer {name!r} for {type(model).__name__}; valid top-level names are "
                f"{valid} (nested modules can be named with dots, e.g. '{valid[0]}.0')"
                if valid
                else f"unknown layer {name!r}: {type(model).__name__} has no submodules"
            ) from None
    return modules


class LayerCapture:
    """Forward hooks keeping each named layer's reduced output of the current forward pass.

    Use as a context manager (the hooks are removed on exit, also on errors);
    call :meth:`take` after every forward pass.

    Args:
        model: The network (a ``DistributedDataParallel`` wrapper is unwrapped).
        layers: Module names; ``None`` means :data:`DEFAULT_LAYERS`.
        reduction: ``"mean"`` averages each channel over space (the paper);
            ``"none"`` keeps every ``(c, h, w)`` unit.
    """

    def __init__(
        self, model: nn.Module, layers: Sequence[str] | None = None, reduction: str = "mean"
    ) -> None:
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
        self.model = _unwrap(model)
        self.modules = resolve_layers(self.model, layers)
        self.reduction = reduction
        self.outputs: dict[str, Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def layers(self) -> list[str]:
        """The hooked layer names, in order."""
        return list(self.modules)

    def _hook(self, name: str):
        def hook(module: nn.Module, _inputs: object, output: object) -> None:
            if name in self.outputs:
                raise ConfigError(
                    f"layer {name!r} ({type(module).__name__}) ran more than once in one "
                    "forward pass, so its output is ambiguous; hook a block or stage "
                    "(e.g. 'layer1') instead of a shared module such as 'relu'"
                )
            if not isinstance(output, Tensor) or output.ndim < 2:
                raise ConfigError(
                    f"layer {name!r} must return a batched (N, C, ...) tensor, got "
                    f"{getattr(output, 'shape', type(output).__name__)}"
                )
            out = output.detach()
            if self.reduction == "mean" and out.ndim > 2:
                out = out.mean(dim=tuple(range(2, out.ndim)))
            self.outputs[name] = out

        return hook

    def __enter__(self) -> LayerCapture:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.outputs.clear()

    def take(self) -> dict[str, Tensor]:
        """The outputs of the last forward pass (and forget them).

        Raises:
            ConfigError: a hooked layer did not run.
        """
        missing = [n for n in self.modules if n not in self.outputs]
        if missing:
            raise ConfigError(
                f"layers {missing} were not executed by {type(self.model).__name__}.forward; "
                "choose modules on the forward path"
            )
        outputs, self.outputs = self.outputs, {}
        return outputs


def split_batch(batch: object) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` of an ``(images, labels, ...)`` batch.

    Raises:
        DataError: anything else.
    """
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        images, labels = batch[0], batch[1]
        if isinstance(images, Tensor) and isinstance(labels, Tensor):
            return images, labels
    raise DataError(
        "each batch must be a (images, labels, ...) tuple or list of tensors, got "
        f"{type(batch).__name__}"
    )


class TopOne:
    """Top-1 hits of a classifier's outputs over a loop (``compute_class_means(on_output=...)``).

    The network's accuracy on the data its selectivity is measured on: channels of a network
    at chance level are not those of a network that learned the task. An output that is not
    ``(N, classes)`` logits, or has another number of classes than ``num_classes``, leaves
    :attr:`accuracy` ``None``.
    """

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes
        self.correct = 0
        self.total = 0
        self.scored = True

    def __call__(self, output: object, labels: Tensor) -> None:
        if not isinstance(output, Tensor) or output.ndim != 2:
            self.scored = False
            return
        if self.num_classes is not None and output.shape[1] != self.num_classes:
            self.scored = False
            return
        self.correct += int((output.argmax(1).cpu() == labels.cpu()).sum())
        self.total += int(labels.numel())

    @property
    def accuracy(self) -> float | None:
        """Top-1 accuracy, or ``None`` when it cannot be scored."""
        return self.correct / self.total if self.scored and self.total else None


def compute_class_means(
    model: nn.Module,
    dataloader: Iterable,
    layers: Sequence[str] | None = None,
    num_classes: int | None = None,
    reduction: str = "mean",
    device: torch.device | str | None = None,
    sync: bool | None = None,
    max_batches: int | None = None,
    progress: bool = False,
    accumulate_dtype: torch.dtype = torch.float64,
    on_output: Callable[[object, Tensor], None] | None = None,
) -> ClassActivationStats:
    """Stream a data set through ``model`` and sum the hooked activations per class.

    Args:
        model: Network whose submodules ``layers`` are hooked; run in eval
            mode under ``torch.no_grad`` (modes are restored afterwards).
        dataloader: Yields ``(images, labels, ...)`` batches. If it is a
            ``DataLoader`` with a ``DistributedSampler``, the sampler's
            repeated padding samples are not counted (:mod:`reaf_lightning.analysis.streaming`).
        layers: Module names to analyse; default :data:`DEFAULT_LAYERS`.
        num_classes: Number of classes; ``None`` infers it from the largest
            label seen (across ranks when synchronising).
        reduction: ``"mean"`` (one unit per channel, the paper) or ``"none"``.
        device: Where to run; default the device of the model's first
            parameter. The model is moved there in place, like ``nn.Module.to``.
        sync: All-reduce sums and counts across processes; ``None`` (auto):
            when ``torch.distributed`` is initialised *and* the loader shards
            the data with a ``DistributedSampler``.
        max_batches: Stop after this many batches per process (smoke runs).
        progress: Show a tqdm progress bar over batches (rank 0 only).
        accumulate_dtype: dtype of the sums (float32 on devices without float64).
        on_output: Called with the network's output and the labels of every batch's
            counted samples (e.g. :class:`TopOne`, the accuracy on the same images).

    Returns:
        The per-class sums and counts, identical on every rank after sync.

    Raises:
        ConfigError: an unknown reduction or layer, a module that runs more
            than once per forward pass, or bad ``num_classes``/``max_batches``.
        DataError: a label out of range, a batch without labels, no samples.
        NumericalError: NaN or inf activations (naming the layer).
    """
    if num_classes is not None and num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 or None, got {num_classes}")
    if max_batches is not None and max_batches < 1:
        raise ConfigError(f"max_batches must be >= 1 or None, got {max_batches}")
    net = _unwrap(model)
    capture = LayerCapture(net, layers, reduction)
    device = _model_device(net) if device is None else torch.device(device)
    net.to(device)
    sampler = distributed_sampler(dataloader)
    do_sync = should_sync(sync, sampler)
    sums = ClassSums(capture.layers, num_classes, reduction, device, accumulate_dtype)
    padding = ShardPadding(sampler)

    modes = {m: m.training for m in net.modules()}
    try:
        net.eval()
        with capture, torch.no_grad():
            for step, batch in enumerate(_progress(dataloader, progress, max_batches)):
                images, labels = split_batch(batch)
                real = padding.real(int(labels.shape[0]))
                images = images.to(device, non_blocking=True)
                if step == 0:  # refuse layers whose outputs can be negative, before any sum
                    check_measurable_layers(net, capture.layers, images[:2])
                    capture.outputs.clear()
                output = net(images)
                outputs = capture.take()
                if real > 0:
                    sums.add({n: t[:real] for n, t in outputs.items()}, labels[:real])
                    if on_output is not None:
                        kept = output[:real] if isinstance(output, Tensor) else output
                        on_output(kept, labels[:real])
                if max_batches is not None and step + 1 >= max_batches:
                    break
    finally:
        for module, training in modes.items():
            module.training = training

    if do_sync:
        sums.all_reduce()
    stats = sums.result()
    counted = int(stats.counts.sum())
    if counted == 0:
        raise DataError("the dataloader yielded no samples; cannot compute class means")
    bad = stats.non_finite_layers()
    if bad:
        raise NumericalError(
            f"non-finite activations (NaN or inf) in layer {bad[0]!r} of {type(net).__name__}; "
            "class selectivity is undefined"
        )
    raise_on_negative(stats)
    if sampler is not None and do_sync and max_batches is None:
        expected = len(sampler.dataset)  # type: ignore[arg-type]
        if counted != expected:
            warnings.warn(
                f"counted {counted} samples across ranks but the data set has {expected} "
                "(drop_last on the sampler or loader?); class means cover the counted samples",
                stacklevel=2,
            )
    return stats


def raise_on_negative(stats: ClassActivationStats) -> None:
    """Refuse sums holding negative activations: no index outside [0, 1] is ever returned.

    :func:`~reaf_lightning.analysis.nonnegative.check_measurable_layers` refuses such
    layers by structure first; this catches what a structure cannot show (a custom module).

    Raises:
        ConfigError: naming the layer.
    """
    negative = stats.negative_layers()
    if negative:
        raise ConfigError(
            f"layer {negative[0]!r} produced negative activations, for which class selectivity "
            "is undefined (the paper measures stage outputs, which follow a ReLU); choose a layer "
            "whose output is a ReLU's"
        )


def compute_selectivity(
    model: nn.Module, dataloader: Iterable, **kwargs: object
) -> dict[str, Tensor]:
    """Class selectivity index of every unit of the given layers.

    :func:`compute_class_means` (same keyword arguments) followed by the index
    per layer; use :func:`compute_class_means` directly to keep the means.

    Returns:
        ``{layer: (units,) SI tensor}`` on the CPU, in the order of ``layers``;
        with ``reduction="none"`` the units of a ``(C, H, W)`` output are
        flattened in C-major order.
    """
    stats = compute_class_means(model, dataloader, **kwargs)  # type: ignore[arg-type]
    return {layer: si.cpu() for layer, si in stats.selectivity().items()}


def _progress(dataloader: Iterable, enabled: bool, max_batches: int | None) -> Iterable:
    rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    if not (enabled and rank0):
        return dataloader
    from tqdm.auto import tqdm

    try:
        total: int | None = len(dataloader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    return tqdm(dataloader, total=total, desc="class selectivity", unit="batch", leave=False)


def _unwrap(model: nn.Module) -> nn.Module:
    """The inner network of a DistributedDataParallel (or DataParallel) wrapper."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _model_device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")
