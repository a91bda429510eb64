"""``impl="auto"``: pick the fastest REAF strategy per layer and input signature.

Like ``torch.backends.cudnn.benchmark``: the first call with a new (layer shape,
input shape, dtype, device, memory format, grad mode) signature times forward
(+ backward when gradients are needed) of every strategy on detached copies, and
the fastest is cached for all layers with that signature. A fixed rule
(:func:`resolve_auto_impl`) decides instead where timing is impossible or harmful:
under ``torch.compile`` tracing, on the meta device, under deterministic mode (a
timing-dependent choice would make runs differ in the last bits) and for calls too
small to time.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from reaf_lightning.layers.reaf_conv import REAFConv2d, REAFSpec

__all__ = ["AUTOTUNE_MIN_MACS", "autotune_cache", "choose_impl", "resolve_auto_impl"]

_AUTOTUNE_CACHE: dict[tuple, str] = {}

# Calls below this many multiply-accumulates take microseconds: timing them measures
# noise, and costs more than any choice could save. They use the fixed rule.
AUTOTUNE_MIN_MACS = 10_000_000


def autotune_cache() -> dict[tuple, str]:
    """The process-wide decisions, keyed by layer and input signature.

    Exposed for inspection and for benchmarks (``autotune_cache().clear()`` re-tunes).
    """
    return _AUTOTUNE_CACHE


def resolve_auto_impl(spec: REAFSpec, device_type: str) -> str:
    """The strategy ``auto`` uses when it does not time candidates.

    On the CPU the rule follows BENCHMARKS.md: ``decompose`` (exact FLOPs in ``G_I``
    wide groups) was fastest or within a few percent on every REAF-ResNet50 layer
    shape of Table 3. On CUDA, where no measurement exists yet (``benchmarks/gpu_check.py``
    records the per-layer winners), dense kernels are assumed to stay ahead while
    ``masked`` wastes at most 4x (``G_M / G_I >= 1/4``).
    """
    if spec.g_m == spec.g_i:
        return "masked"  # a dense convolution: every strategy is the same work
    if device_type == "cuda" and spec.g_m / spec.g_i >= 0.25:
        return "masked"
    return "decompose"


def choose_impl(layer: REAFConv2d, x: Tensor) -> str:
    """The strategy ``impl="auto"`` runs for ``layer`` on the batched input ``x``."""
    if not _can_time(x) or useful_macs(layer, x) < AUTOTUNE_MIN_MACS:
        return resolve_auto_impl(layer.spec, x.device.type)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad)
    key = (
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        tuple(layer.spec),
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.bias is not None,
        tuple(x.shape),
        x.dtype,
        str(x.device),
        x.is_contiguous(memory_format=torch.channels_last),
        needs_grad,
        torch.is_autocast_enabled(x.device.type),
    )
    if key not in _AUTOTUNE_CACHE:
        _AUTOTUNE_CACHE[key] = time_strategies(layer, x, needs_grad)
    return _AUTOTUNE_CACHE[key]


def useful_macs(layer: REAFConv2d, x: Tensor) -> int:
    """Multiply-accumulates of one call on ``x`` (compact weights), from the input shape."""
    h_out, w_out = layer.output_size(*x.shape[-2:])
    return (
        x.shape[0]
        * layer.out_channels
        * h_out
        * w_out
        * layer.merged_channels
        * layer.kernel_size**2
    )


def candidates(layer: REAFConv2d) -> tuple[str, ...]:
    """Strategies worth timing: for ``G_M = 1`` gather and decompose_loop repeat others' convs."""
    if layer.g_m == layer.g_i:
        return ("masked",)  # a dense convolution: every strategy is the same work
    if layer.g_m == 1:
        return ("masked", "decompose", "loop")
    return ("masked", "decompose", "loop", "gather", "decompose_loop")


def time_strategies(layer: REAFConv2d, x: Tensor, needs_grad: bool, repeats: int = 3) -> str:
    """Fastest strategy on detached copies of the inputs; parameters are never touched."""
    names = candidates(layer)
    if len(names) == 1:
        return names[0]
    x = x.detach().requires_grad_(needs_grad)
    weight = layer.weight.detach().requires_grad_(needs_grad)
    bias = None if layer.bias is None else layer.bias.detach()
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def timed(impl: str) -> float:
        sync()
        start = time.perf_counter()
        with torch.enable_grad() if needs_grad else torch.no_grad():
            y = layer.compute(impl, x, weight, bias)
            if needs_grad:
                torch.autograd.grad(y.sum(), (x, weight))
        sync()
        return time.perf_counter() - start

    # Warm-up (first calls allocate and pick kernels). A candidate already 3x slower than
    # the best is not timed again: on a slow strategy (gather over 70 groups) the repeats
    # would cost seconds per layer shape and could not change the answer.
    warmup = {impl: timed(impl) for impl in names}
    names = tuple(c for c in names if warmup[c] <= 3 * min(warmup.values()))
    times: dict[str, list[float]] = {impl: [] for impl in names}
    for _ in range(repeats):
        for impl in names:  # interleaved, so load bursts hit every candidate
            times[impl].append(timed(impl))
    # Minimum, not median: background load only ever adds time (as timeit argues).
    return min(names, key=lambda impl: min(times[impl]))


def _can_time(x: Tensor) -> bool:
    return (
        x.device.type != "meta"
        and not torch.compiler.is_compiling()
        and not torch.are_deterministic_algorithms_enabled()
    )
