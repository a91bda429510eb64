"""Streaming per-class sums of layer activations, across batches and processes.

Why sums: memory stays ``num_classes x units`` however many images pass, and
sums add up across DDP processes with one all-reduce each (the paper evaluates
on the 50,000 ImageNet validation images; keeping activations is not an option).

Distributed evaluation (ours; the paper does not discuss it): a
``DistributedSampler`` with ``drop_last=False`` pads its index list to a
multiple of the world size by repeating samples. In its padded global order the
sample at position ``p`` is a repeat iff ``p >= len(dataset)``; on rank ``r``
the ``k``-th sample has global position ``r + k * num_replicas``. So a rank
counts its ``k``-th sample only if ``r + k * num_replicas < len(dataset)``,
which is always a prefix of each batch (no device synchronisation needed), and
sums and counts are then all-reduced. This holds for shuffled and unshuffled
samplers and for Lightning's ``DistributedSamplerWrapper`` (a
``DistributedSampler`` subclass) and needs no change to the data set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from reaf_lightning.errors import ConfigError, DataError

from .selectivity import ClassActivationStats

__all__ = ["ClassSums", "ShardPadding", "distributed_sampler", "should_sync"]


class ClassSums:
    """Per-class running sums of unit activations; grows its classes when ``num_classes`` is None.

    All layers share one ``(num_classes, total units)`` buffer, so a batch costs
    one ``cat``, one cast and one ``index_add_`` whatever the number of layers
    (small ops are what a busy CPU pays for), and one all-reduce under DDP.

    Args:
        layers: Layer names, in the order the result keeps.
        num_classes: Number of classes, or ``None`` to infer it from the
            largest label seen (across ranks in :meth:`all_reduce`).
        reduction: Recorded in the result (``"mean"`` or ``"none"``).
        device: Where the sums live (the model's device: no transfers per batch).
        dtype: Accumulation dtype; float64 keeps long sums exact.
    """

    def __init__(
        self,
        layers: list[str],
        num_classes: int | None,
        reduction: str,
        device: torch.device,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.layers = layers
        self.fixed_classes = num_classes
        self.num_classes = num_classes or 0
        self.reduction = reduction
        self.device = device
        self.dtype = dtype
        self.unit_shapes: dict[str, tuple[int, ...]] = {}
        self.sums: Tensor | None = None  # (num_classes, units of all layers), once shapes are known
        self.counts = torch.zeros(self.num_classes, dtype=torch.int64, device=device)

    def _allocate(self) -> None:
        units = sum(math.prod(self.unit_shapes[n]) for n in self.layers)
        self.sums = torch.zeros(self.num_classes, units, dtype=self.dtype, device=self.device)

    def _grow(self, num_classes: int) -> None:
        extra = num_classes - self.num_classes
        if extra <= 0:
            return
        self.counts = torch.cat([self.counts, self.counts.new_zeros(extra)])
        if self.sums is not None:
            self.sums = torch.cat([self.sums, self.sums.new_zeros(extra, self.sums.shape[1])])
        self.num_classes = num_classes

    def add(self, features: Mapping[str, Tensor], labels: Tensor) -> None:
        """Add one batch: ``features[layer]`` is ``(n, ...)`` per sample, ``labels`` ``(n,)``.

        Raises:
            DataError: labels that are not 1-D integer class indices in range.
        """
        if labels.ndim != 1 or labels.is_floating_point():
            raise DataError(
                "labels must be a 1-D integer tensor of class indices, got "
                f"{labels.dtype} of shape {tuple(labels.shape)}"
            )
        if labels.numel() == 0:
            return
        lo, hi = int(labels.min()), int(labels.max())  # usually CPU labels: no device sync
        if lo < 0 or (self.fixed_classes is not None and hi >= self.fixed_classes):
            raise DataError(
                f"labels must lie in [0, {self.fixed_classes or 'inf'}), got min {lo}, max {hi}"
            )
        if self.fixed_classes is None:
            self._grow(hi + 1)
        if self.sums is None:
            for name in self.layers:
                shape = tuple(features[name].shape[1:])
                self.unit_shapes[name] = shape if self.reduction == "none" else (shape[0],)
            self._allocate()
        assert self.sums is not None
        batch = torch.cat([features[n].reshape(labels.shape[0], -1) for n in self.layers], dim=1)
        labels = labels.to(self.device, dtype=torch.int64, non_blocking=True)
        self.sums.index_add_(0, labels, batch.to(self.dtype))
        self.counts.index_add_(0, labels, torch.ones_like(labels))

    def all_reduce(self) -> None:
        """Sum over all processes; every rank must call it (collective)."""
        if self.fixed_classes is None:
            # Ranks may have seen different label ranges: agree on the largest.
            size = torch.tensor([self.num_classes], dtype=torch.int64, device=self.device)
            dist.all_reduce(size, op=dist.ReduceOp.MAX)
            self._grow(int(size))
        # Unit shapes are known only on ranks that saw data; a rank with an empty
        # shard still joins the all-reduce, with zeros of the same shape.
        gathered: list[dict[str, tuple[int, ...]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self.unit_shapes)
        shapes = next((dict(s) for s in gathered if s), None)
        if shapes is not None:
            self.unit_shapes = shapes
            if self.sums is None:
                self._allocate()
            dist.all_reduce(self.sums)
        dist.all_reduce(self.counts)

    def result(self) -> ClassActivationStats:
        """The sums so far, per layer (layers without data get zero units)."""
        if self.sums is None:
            self.unit_shapes = {n: (0,) for n in self.layers}
            self._allocate()
        assert self.sums is not None
        sizes = [math.prod(self.unit_shapes[n]) for n in self.layers]
        views = torch.split(self.sums, sizes, dim=1)
        return ClassActivationStats(
            sums=dict(zip(self.layers, views)),
            counts=self.counts,
            reduction=self.reduction,
            unit_shapes=dict(self.unit_shapes),
        )


class ShardPadding:
    """Counts how many leading samples of each batch of one rank are real, not padding.

    Args:
        sampler: The loader's ``DistributedSampler``, or ``None`` (nothing is padding).
    """

    def __init__(self, sampler: DistributedSampler | None) -> None:
        self.sampler = sampler
        self.position = 0  # samples this rank has consumed so far

    def real(self, batch_size: int) -> int:
        """Number of real samples at the start of the next batch of ``batch_size``."""
        start, self.position = self.position, self.position + batch_size
        if self.sampler is None or self.sampler.drop_last:
            return batch_size
        size = len(self.sampler.dataset)  # type: ignore[arg-type]
        rank, replicas = self.sampler.rank, self.sampler.num_replicas
        real_total = max(0, -(-(size - rank) // replicas))  # ceil((size - rank) / replicas)
        return max(0, min(batch_size, real_total - start))


def distributed_sampler(dataloader: Iterable) -> DistributedSampler | None:
    """The ``DistributedSampler`` that shards ``dataloader``, if any."""
    if not isinstance(dataloader, DataLoader):
        return None
    for sampler in (dataloader.sampler, getattr(dataloader.batch_sampler, "sampler", None)):
        if isinstance(sampler, DistributedSampler):
            return sampler
    return None


def should_sync(sync: bool | None, sampler: DistributedSampler | None) -> bool:
    """Whether to all-reduce: ``sync``, or (``None``) when the loader is sharded across ranks.

    A loader that feeds every rank the whole data set must not be summed.

    Raises:
        ConfigError: ``sync=True`` without a process group, or a sampler built
            for another world size.
    """
    initialised = dist.is_available() and dist.is_initialized()
    if sync is None:
        return initialised and sampler is not None and dist.get_world_size() > 1
    if sync and not initialised:
        raise ConfigError("sync=True needs an initialised torch.distributed process group")
    if sync and sampler is not None and sampler.num_replicas != dist.get_world_size():
        raise ConfigError(
            f"DistributedSampler.num_replicas={sampler.num_replicas} differs from the "
            f"world size {dist.get_world_size()}"
        )
    return bool(sync)
