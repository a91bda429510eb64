"""Device-resident CIFAR batches: augmentation on the accelerator, no worker processes.

CIFAR-100 is tiny (50,000 x 3 x 32 x 32 uint8 = 154 MB), so the whole training
set fits in GPU memory. Keeping it there and doing the paper's augmentation
(SPEC section 4: random crop 32 with padding 4, horizontal flip, normalise)
batch-wise with :mod:`.augment` removes the per-image Python work and the
host-to-device copies that bound a CPU ``DataLoader`` at small image sizes.

Sharding under DDP: Lightning only injects a ``DistributedSampler`` into real
``DataLoader`` objects, so this loader shards itself. It holds a
``torch.utils.data.DistributedSampler`` over the index range (exposed as
``.sampler``, so Lightning's fit loop calls its ``set_epoch`` every epoch):
each rank takes the strided slice ``rank::world_size`` of a permutation seeded
by ``seed + epoch``; the permutation is padded with its own first indices to a
multiple of ``world_size``, so every rank gets the same number of samples (the
same convention, and the same indices, as the ``DataLoader`` path).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from ._common import check_positive_int
from .augment import apply_crop_flip, normalize_uint8, sample_crop_flip_params

__all__ = ["DeviceCIFARLoader"]


class DeviceCIFARLoader:
    """Iterable of ``(float images, int64 labels)`` batches from a uint8 tensor on a device.

    Works for any ``(N, C, H, W)`` uint8 image tensor (CIFAR is the intended use).

    Args:
        images: ``(N, C, H, W)`` uint8 images; moved to ``device`` once.
        labels: ``(N,)`` integer labels.
        batch_size: images per batch on this rank (per device under DDP).
        mean: per-channel mean (in [0, 1] pixel units) for normalisation.
        std: per-channel standard deviation.
        device: where data and augmentation live (default: ``images.device``).
        augment: apply random crop (zero padding ``padding``) and, if ``flip``,
            random horizontal flips; off for evaluation.
        padding: crop padding (the paper uses 4).
        flip: draw horizontal flips when augmenting.
        shuffle: new permutation every epoch (training) or fixed order (evaluation).
        drop_last: drop the last incomplete batch of this rank's shard.
        rank: this process's global rank.
        world_size: number of processes; each gets ``ceil(N / world_size)`` samples.
        seed: base seed of the permutation and of the augmentation draws.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str | None = None,
        augment: bool = True,
        padding: int = 4,
        flip: bool = True,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                "images must be a uint8 (N, C, H, W) tensor, "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, dtype=torch.int64)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment
        self.padding = padding
        self.flip = flip
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        # Index sharding is delegated to the same sampler Lightning would inject, so both
        # paths visit the same samples per rank and epoch. ``range`` only needs ``len``.
        self.sampler = DistributedSampler(
            range(images.shape[0]),  # type: ignore[arg-type]
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        # Lightning's ``_is_dataloader_shuffled`` reads ``batch_sampler`` when ``sampler`` exists.
        self.batch_sampler = None

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation (Lightning does this through ``.sampler``)."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _generator(self) -> torch.Generator:
        # Distinct, reproducible augmentation stream per (seed, epoch, rank).
        state = np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(1)[0]
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(state))
        return gen

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        index = torch.as_tensor(list(self.sampler), dtype=torch.int64, device=self.device)
        gen = self._generator() if self.augment else None
        for k in range(len(self)):
            batch_idx = index[k * self.batch_size : (k + 1) * self.batch_size]
            x = self.images.index_select(0, batch_idx)
            if self.augment:
                oy, ox, flips = sample_crop_flip_params(
                    x.shape[0], self.padding, self.flip, device=self.device, generator=gen
                )
                x = apply_crop_flip(x, oy, ox, flips, self.padding)
            yield normalize_uint8(x, self.mean, self.std), self.labels.index_select(0, batch_idx)
