"""Class selectivity index of hidden units (paper Section IV-D, Figures 2-4).

The paper measures how strongly each channel of a stage responds to one class
rather than to all classes. For every channel of a layer's output it takes the
per-image spatial mean of the (post-ReLU) activation, averages that per class
over the evaluation set to obtain class-conditional means ``u_c``, and computes

    SI = (u_max - u_-max) / (u_max + u_-max + eps),

where ``u_max = max_c u_c`` and ``u_-max`` is the mean of the *other* classes.

This module holds the maths and the streaming, hook-based accumulation. It
deliberately imports neither Lightning nor seaborn, so it can be used from a
plain PyTorch loop, from a Lightning callback, or from the ``reaf-analysis``
command alike.

Design choices (ours; the paper is silent):

* The hook sits on the named module (a ResNet stage ``layer1`` .. ``layer4`` or
  ``avgpool``, or any dotted name such as ``features.17`` of MobileNetV2) and
  captures *its output*. A module that runs more than once per forward pass
  (e.g. torchvision's Bottleneck calls its single ``relu`` module three times)
  is rejected with an error instead of silently mixing activations.
* Per-class *sums* and *counts* are accumulated with ``index_add_`` on the
  model's device in float64, so memory is ``num_classes x units`` regardless of
  the number of images and the final means are exact to double precision.
* Distributed evaluation: a ``DistributedSampler`` (``drop_last=False``) pads
  its index list to a multiple of the world size by repeating samples. In its
  padded global order the sample at position ``p`` is a repeat iff
  ``p >= len(dataset)``; on rank ``r`` the ``k``-th sample has global position
  ``r + k * num_replicas``. We therefore count a sample only if
  ``r + k * num_replicas < len(dataset)`` -- always a prefix of each batch, so
  no device synchronisation is needed -- and then all-reduce sums and counts.
  This holds for shuffled and unshuffled samplers and for Lightning's
  ``DistributedSamplerWrapper`` (a ``DistributedSampler`` subclass), and needs
  no change to the dataset. A final check compares the global count with the
  dataset length and warns on mismatch (e.g. ``drop_last=True``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

__all__ = [
    "DEFAULT_LAYERS",
    "EPS",
    "REDUCTIONS",
    "ClassActivationStats",
    "class_selectivity",
    "compute_class_means",
    "compute_selectivity",
    "resolve_layers",
]

#: Layers analysed in the paper's Figures 2-4 (torchvision ResNet module names).
DEFAULT_LAYERS: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4", "avgpool")
#: Stabiliser of the selectivity index's denominator (paper: small constant).
EPS: float = 1e-7
#: Spatial reductions: ``mean`` = one unit per channel (the paper), ``none`` = every (c, h, w).
REDUCTIONS: tuple[str, ...] = ("mean", "none")


def class_selectivity(class_means: Tensor, eps: float = EPS) -> Tensor:
    """Selectivity index of every unit from its class-conditional mean activations.

    Pure function so that it can be checked against hand-computed values.

    Args:
        class_means: ``(num_classes, units)`` tensor of mean activations
            ``u_c`` per class (rows) and unit (columns); ``num_classes >= 2``.
            The index is meant for non-negative (post-ReLU) activations.
        eps: Added to the denominator so that a unit that never fires (all
            ``u_c = 0``) gets SI 0 instead of 0/0.

    Returns:
        ``(units,)`` tensor ``(u_max - u_-max) / (u_max + u_-max + eps)``, in
        the dtype of ``class_means``. 0 means no preference, 1 means the unit
        fires for a single class only.

    Raises:
        ValueError: if ``class_means`` is not 2-D or has fewer than 2 classes.
    """
    if class_means.ndim != 2:
        raise ValueError(
            f"class_means must be a (num_classes, units) tensor, got shape "
            f"{tuple(class_means.shape)}"
        )
    num_classes = class_means.shape[0]
    if num_classes < 2:
        raise ValueError(
            f"class selectivity needs at least 2 classes, got num_classes={num_classes}"
        )
    u_max = class_means.max(dim=0).values
    # Mean over the other classes: (sum - max) / (K - 1). With ties the "other"
    # classes include the tied ones, which is the definition's intent.
    u_rest = (class_means.sum(dim=0) - u_max) / (num_classes - 1)
    return (u_max - u_rest) / (u_max + u_rest + eps)


@dataclass
class ClassActivationStats:
    """Per-class sums of unit activations and per-class sample counts.

    Sums rather than means are the primitive because they can be added across
    batches and across processes (all-reduce); means follow from them.

    Attributes:
        sums: ``{layer: (num_classes, units)}`` sums of the reduced activations.
        counts: ``(num_classes,)`` int64 number of samples counted per class.
        reduction: The spatial reduction used (``"mean"`` or ``"none"``).
        unit_shapes: ``{layer: shape of one sample's units before flattening}``,
            e.g. ``(C,)`` for ``mean`` or ``(C, H, W)`` for ``none``.
    """

    sums: dict[str, Tensor]
    counts: Tensor
    reduction: str
    unit_shapes: dict[str, tuple[int, ...]]

    @property
    def num_classes(self) -> int:
        """Number of class rows (including classes without samples)."""
        return int(self.counts.shape[0])

    def class_means(self, drop_empty: bool = True) -> dict[str, Tensor]:
        """Class-conditional means ``u_c`` per layer.

        Args:
            drop_empty: Leave out classes with no samples (their mean is
                undefined); otherwise their rows are NaN.

        Returns:
            ``{layer: (classes, units)}`` in the accumulation dtype.
        """
        present = self.counts > 0
        out: dict[str, Tensor] = {}
        for layer, sums in self.sums.items():
            counts = self.counts.to(device=sums.device, dtype=sums.dtype).unsqueeze(1)
            if drop_empty:
                keep = present.to(sums.device)
                out[layer] = sums[keep] / counts[keep]
            else:
                out[layer] = sums / counts  # 0/0 = NaN marks empty classes
        return out

    def selectivity(self, eps: float = EPS) -> dict[str, Tensor]:
        """Selectivity index per unit for every layer (classes without samples are ignored).

        Raises:
            ValueError: if fewer than 2 classes have samples.
        """
        present = int((self.counts > 0).sum())
        if present < self.num_classes:
            warnings.warn(
                f"{self.num_classes - present} of {self.num_classes} classes have no samples; "
                "they are left out of the selectivity index",
                stacklevel=2,
            )
        return {
            layer: class_selectivity(means, eps=eps)
            for layer, means in self.class_means(drop_empty=True).items()
        }


def resolve_layers(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Look up the modules to hook by (dotted) name.

    Args:
        model: The network (a ``DistributedDataParallel`` wrapper is unwrapped).
        layers: Module names such as ``layer1`` or ``features.17``; ``None``
            means :data:`DEFAULT_LAYERS`.

    Returns:
        ``{name: module}`` in the requested order.

    Raises:
        ValueError: for an empty list, duplicates, or a name that is not a
            submodule; the message lists the valid top-level names.
    """
    model = _unwrap(model)
    names = list(DEFAULT_LAYERS if layers is None else layers)
    if not names:
        raise ValueError("layers must name at least one module, got an empty list")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"layers contains duplicates: {duplicates}")
    modules: dict[str, nn.Module] = {}
    for name in names:
        try:
            modules[name] = model.get_submodule(name)
        except AttributeError:
            valid = [n for n, _ in model.named_children()]
            raise ValueError(
                f"unknown layer {name!r} for {type(model).__name__}; valid top-level names are "
                f"{valid} (nested modules can be named with dots, e.g. '{valid[0]}.0')"
                if valid
                else f"unknown layer {name!r}: {type(model).__name__} has no submodules"
            ) from None
    return modules


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
) -> ClassActivationStats:
    """Stream a data set through ``model`` and sum hooked activations per class.

    Args:
        model: Network whose submodules ``layers`` are hooked. It is run in
            eval mode under ``torch.no_grad``; each submodule's train/eval flag
            is restored afterwards, and the hooks are removed even on error.
        dataloader: Yields ``(images, labels, ...)`` batches. If it is a
            ``DataLoader`` with a ``DistributedSampler``, repeated padding
            samples are skipped (see the module docstring).
        layers: Module names to analyse; default :data:`DEFAULT_LAYERS`.
        num_classes: Number of classes; ``None`` infers it from the largest
            label seen (across ranks when synchronising).
        reduction: ``"mean"`` averages each channel over space (one unit per
            channel, as in the paper); ``"none"`` keeps every ``(c, h, w)``.
        device: Where to run; default the device of the model's first
            parameter (CPU for a parameter-free model). The model is moved
            there in place, like ``nn.Module.to``.
        sync: All-reduce sums and counts across processes. ``None`` (auto):
            only when ``torch.distributed`` is initialised *and* the loader
            shards the data with a ``DistributedSampler``; a loader that feeds
            every rank the whole data set must not be summed.
        max_batches: Stop after this many batches per process (smoke runs).
        progress: Show a tqdm progress bar over batches (rank 0 only).
        accumulate_dtype: dtype of the sums; float64 keeps long sums exact
            (use float32 on devices without float64, e.g. MPS).

    Returns:
        The per-class sums and counts, identical on every rank after sync.

    Raises:
        ValueError: for an unknown reduction or layer, a label outside
            ``[0, num_classes)``, a batch without labels, a module that runs
            more than once per forward pass, or an empty data set.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    if num_classes is not None and num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 or None, got {num_classes}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    net = _unwrap(model)
    modules = resolve_layers(net, layers)
    device = _model_device(net) if device is None else torch.device(device)
    net.to(device)

    sampler = _distributed_sampler(dataloader)
    do_sync = _should_sync(sync, sampler)
    accumulator = _Accumulator(list(modules), num_classes, reduction, device, accumulate_dtype)

    captured: dict[str, Tensor] = {}

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if name in captured:
                raise ValueError(
                    f"layer {name!r} ({type(_module).__name__}) ran more than once in one "
                    "forward pass, so its output is ambiguous; hook a block or stage "
                    "(e.g. 'layer1') instead of a shared module such as 'relu'"
                )
            if not isinstance(output, Tensor):
                raise ValueError(
                    f"layer {name!r} returned {type(output).__name__}, expected a Tensor"
                )
            captured[name] = _reduce(output, reduction)

        return hook

    modes = {m: m.training for m in net.modules()}
    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()]
    try:
        net.eval()
        batches = _progress(dataloader, progress, max_batches)
        position = 0  # samples this rank has consumed so far (for padding detection)
        with torch.no_grad():
            for step, batch in enumerate(batches):
                images, labels = _split_batch(batch)
                batch_size = int(labels.shape[0])
                valid = _valid_prefix(sampler, position, batch_size)
                position += batch_size
                captured.clear()
                net(images.to(device, non_blocking=True))
                missing = [n for n in modules if n not in captured]
                if missing:
                    raise ValueError(
                        f"layers {missing} were not executed by {type(net).__name__}.forward; "
                        "choose modules on the forward path"
                    )
                if valid > 0:
                    accumulator.add({n: t[:valid] for n, t in captured.items()}, labels[:valid])
                captured.clear()
                if max_batches is not None and step + 1 >= max_batches:
                    break
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
        captured.clear()

    if do_sync:
        accumulator.all_reduce()
    stats = accumulator.result()
    if int(stats.counts.sum()) == 0:
        raise ValueError("the dataloader yielded no samples; cannot compute class means")
    if sampler is not None and do_sync and max_batches is None:
        expected = len(sampler.dataset)  # type: ignore[arg-type]
        if int(stats.counts.sum()) != expected:
            warnings.warn(
                f"counted {int(stats.counts.sum())} samples across ranks but the data set has "
                f"{expected} (drop_last on the sampler or loader?); class means cover the "
                "counted samples only",
                stacklevel=2,
            )
    return stats


def compute_selectivity(
    model: nn.Module,
    dataloader: Iterable,
    layers: Sequence[str] | None = None,
    num_classes: int | None = None,
    reduction: str = "mean",
    device: torch.device | str | None = None,
    **kwargs: object,
) -> dict[str, Tensor]:
    """Class selectivity index of every unit of the given layers.

    Thin wrapper: :func:`compute_class_means` followed by
    :func:`class_selectivity` per layer. Use :func:`compute_class_means`
    directly to keep the class means (or to merge several runs).

    Args:
        model, dataloader, layers, num_classes, reduction, device: See
            :func:`compute_class_means`.
        **kwargs: Further options of :func:`compute_class_means` (``sync``,
            ``max_batches``, ``progress``, ``accumulate_dtype``).

    Returns:
        ``{layer: (units,) SI tensor}`` on the CPU, in the order of ``layers``;
        with ``reduction="none"`` the units of a ``(C, H, W)`` output are
        flattened in C-major order.
    """
    stats = compute_class_means(
        model,
        dataloader,
        layers=layers,
        num_classes=num_classes,
        reduction=reduction,
        device=device,
        **kwargs,  # type: ignore[arg-type]
    )
    return {layer: si.cpu() for layer, si in stats.selectivity().items()}


# --------------------------------------------------------------------------- helpers


class _Accumulator:
    """Per-class streaming sums; grows its class dimension when num_classes is unknown."""

    def __init__(
        self,
        layers: list[str],
        num_classes: int | None,
        reduction: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.layers = layers
        self.fixed_classes = num_classes
        self.num_classes = num_classes or 0
        self.reduction = reduction
        self.device = device
        self.dtype = dtype
        self.sums: dict[str, Tensor] = {}
        self.unit_shapes: dict[str, tuple[int, ...]] = {}
        self.counts = torch.zeros(self.num_classes, dtype=torch.int64, device=device)

    def _grow(self, num_classes: int) -> None:
        extra = num_classes - self.num_classes
        if extra <= 0:
            return
        self.counts = torch.cat([self.counts, self.counts.new_zeros(extra)])
        for name, sums in self.sums.items():
            self.sums[name] = torch.cat([sums, sums.new_zeros(extra, sums.shape[1])])
        self.num_classes = num_classes

    def add(self, features: Mapping[str, Tensor], labels: Tensor) -> None:
        if labels.ndim != 1 or labels.is_floating_point():
            raise ValueError(
                "labels must be a 1-D integer tensor of class indices, got "
                f"{labels.dtype} of shape {tuple(labels.shape)}"
            )
        # Range check on the loader's (usually CPU) labels: no device sync.
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or (self.fixed_classes is not None and hi >= self.fixed_classes):
            raise ValueError(
                f"labels must lie in [0, {self.fixed_classes or 'inf'}), got min {lo}, max {hi}"
            )
        if self.fixed_classes is None:
            self._grow(hi + 1)
        labels = labels.to(self.device, dtype=torch.int64, non_blocking=True)
        for name in self.layers:
            feats = features[name]
            if name not in self.sums:
                self.unit_shapes[name] = (
                    tuple(feats.shape[1:]) if self.reduction == "none" else (int(feats.shape[1]),)
                )
                units = int(feats[0].numel())
                self.sums[name] = torch.zeros(
                    self.num_classes, units, dtype=self.dtype, device=self.device
                )
            self.sums[name].index_add_(0, labels, feats.reshape(feats.shape[0], -1).to(self.dtype))
        self.counts.index_add_(0, labels, torch.ones_like(labels))

    def all_reduce(self) -> None:
        if self.fixed_classes is None:
            # Ranks may have seen different label ranges: agree on the largest.
            size = torch.tensor([self.num_classes], dtype=torch.int64, device=self.device)
            dist.all_reduce(size, op=dist.ReduceOp.MAX)
            self._grow(int(size))
        # A rank with an empty shard has no sums yet; every rank must take part
        # in each collective with the same shapes, so agree on the unit counts.
        for name in self.layers:
            local = self.sums[name].shape[1] if name in self.sums else 0
            units = torch.tensor([local], dtype=torch.int64, device=self.device)
            dist.all_reduce(units, op=dist.ReduceOp.MAX)
            if name not in self.sums:
                self.sums[name] = torch.zeros(
                    self.num_classes, int(units), dtype=self.dtype, device=self.device
                )
            dist.all_reduce(self.sums[name])
        dist.all_reduce(self.counts)
        # Unit shapes are only known on ranks that saw data; share them.
        gathered: list[dict[str, tuple[int, ...]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self.unit_shapes)
        for shapes in gathered:
            if shapes:
                self.unit_shapes = dict(shapes)
                break

    def result(self) -> ClassActivationStats:
        for name in self.layers:
            if name not in self.sums:
                self.sums[name] = torch.zeros(self.num_classes, 0, dtype=self.dtype)
                self.unit_shapes[name] = (0,)
        return ClassActivationStats(
            sums={n: self.sums[n] for n in self.layers},
            counts=self.counts,
            reduction=self.reduction,
            unit_shapes=dict(self.unit_shapes),
        )


def _reduce(output: Tensor, reduction: str) -> Tensor:
    """Per-sample units of one layer output: spatial mean per channel, or all (c, h, w)."""
    out = output.detach()
    if out.ndim < 2:
        raise ValueError(
            f"expected a batched layer output (N, C, ...), got shape {tuple(out.shape)}"
        )
    if reduction == "mean" and out.ndim > 2:
        return out.mean(dim=tuple(range(2, out.ndim)))
    return out


def _split_batch(batch: object) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        images, labels = batch[0], batch[1]
        if isinstance(images, Tensor) and isinstance(labels, Tensor):
            return images, labels
    raise ValueError(
        "each batch must be a (images, labels, ...) tuple or list of tensors, got "
        f"{type(batch).__name__}"
    )


def _distributed_sampler(dataloader: Iterable) -> DistributedSampler | None:
    """The DistributedSampler that shards ``dataloader``, if any."""
    if not isinstance(dataloader, DataLoader):
        return None
    candidates = [dataloader.sampler, getattr(dataloader.batch_sampler, "sampler", None)]
    for sampler in candidates:
        if isinstance(sampler, DistributedSampler):
            return sampler
    return None


def _should_sync(sync: bool | None, sampler: DistributedSampler | None) -> bool:
    initialised = dist.is_available() and dist.is_initialized()
    if sync is None:
        return initialised and sampler is not None and dist.get_world_size() > 1
    if sync and not initialised:
        raise ValueError("sync=True needs an initialised torch.distributed process group")
    if sync and sampler is not None and sampler.num_replicas != dist.get_world_size():
        raise ValueError(
            f"DistributedSampler.num_replicas={sampler.num_replicas} differs from the "
            f"world size {dist.get_world_size()}"
        )
    return bool(sync)


def _valid_prefix(sampler: DistributedSampler | None, position: int, batch_size: int) -> int:
    """How many leading samples of this batch are real (not DistributedSampler padding).

    On rank ``r`` the ``k``-th yielded sample has position ``r + k * R`` in the
    sampler's padded global index list; positions ``>= len(dataset)`` repeat
    earlier samples. Positions grow with ``k``, so real samples form a prefix.
    """
    if sampler is None or sampler.drop_last:
        return batch_size
    size = len(sampler.dataset)  # type: ignore[arg-type]
    rank, replicas = sampler.rank, sampler.num_replicas
    # number of k in [position, position + batch_size) with rank + k * replicas < size
    real_total = max(0, -(-(size - rank) // replicas))  # ceil((size - rank) / replicas)
    return max(0, min(batch_size, real_total - position))


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
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
