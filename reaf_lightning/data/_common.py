"""Small helpers shared by the data modules: argument checks and DataLoader construction."""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import DataLoader, Dataset


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` if it is a positive int, else raise a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_non_negative_int(name: str, value: int) -> int:
    """Return ``value`` if it is an int >= 0, else raise a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def check_stats(name: str, values: Sequence[float], channels: int = 3) -> tuple[float, ...]:
    """Validate a per-channel mean/std tuple (``channels`` numbers; std must be > 0)."""
    vals = tuple(float(v) for v in values)
    if len(vals) != channels:
        raise ValueError(f"{name} needs {channels} values (one per RGB channel), got {values!r}")
    if name == "std" and any(v <= 0 for v in vals):
        raise ValueError(f"std values must be > 0, got {values!r}")
    return vals


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    pin_memory: bool,
    drop_last: bool = False,
) -> DataLoader:
    """A plain DataLoader; Lightning swaps in a DistributedSampler under DDP.

    ``shuffle=True`` gives a RandomSampler, which Lightning replaces by a
    shuffling ``DistributedSampler`` (and calls ``set_epoch`` on it every
    epoch), so no sampler is built here.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )
