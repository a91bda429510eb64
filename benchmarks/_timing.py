"""Shared timing helpers: interleaved repeats and medians, so noisy machines still give ratios."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["interleaved_medians", "machine_description", "synchronize"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    candidates: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int = 7,
    warmup: int = 2,
) -> dict[str, float]:
    """Median seconds per call of each candidate, timed round-robin.

    Interleaving (A, B, C, A, B, C, ...) exposes every candidate to the same
    background load, so their *ratios* are meaningful even when absolute times
    drift; the median discards outliers from bursts of load.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
