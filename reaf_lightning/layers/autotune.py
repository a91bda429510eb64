"""``impl="auto"``: pick the fastest REAF strategy per layer and input signature.

Like ``torch.backends.cudnn.benchmark``: the first call with a new (plan, input
shape, dtype, device, memory format, grad mode) signature times forward (+ backward
when gradients are needed) of every candidate in
:data:`~reaf_lightning.layers.strategies.STRATEGIES` on the call's own tensors, and
the fastest is cached for all layers with that signature. A fixed rule
(:func:`resolve_auto_impl`) decides instead where timing is impossible or harmful:
under ``torch.compile`` tracing, on the meta device, under deterministic mode (a
timing-dependent choice would make runs differ in the last bits) and for calls too
small to time.

The trials run inside one library operator, ``reaf_lightning::autotune``: a
dispatch mode such as ``torch.utils.flop_counter.FlopCounterMode`` (which Lightning's
model summary runs) sees that operator, with no FLOPs, and not the trial
convolutions inside it, so what it counts does not depend on whether this call
happened to tune. Backward passes are timed with the strategies' own backward
functions, which need no autograd.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from reaf_lightning.layers.plan import REAFPlan
from reaf_lightning.layers.spec import REAFSpec
from reaf_lightning.layers.strategies import STRATEGIES, run_backward

__all__ = [
    "AUTOTUNE_MIN_MACS",
    "autotune_cache",
    "candidates",
    "choose_impl",
    "resolve_auto_impl",
    "useful_macs",
]

_AUTOTUNE_CACHE: dict[tuple, str] = {}

# Calls below this many multiply-accumulates take microseconds: timing them measures
# noise, and costs more than any choice could save. They use the fixed rule.
AUTOTUNE_MIN_MACS = 10_000_000

_LIBRARY = torch.library.Library("reaf_lightning", "FRAGMENT")
_LIBRARY.define(
    "autotune(Tensor x, Tensor weight, Tensor? bias, Tensor[] index, int[] scalars, "
    "str candidates, bool needs_grad) -> Tensor"
)


_BUILT_IN = ("masked", "gather", "decompose", "decompose_loop", "loop")


def autotune_cache() -> dict[tuple, str]:
    """The process-wide decisions, keyed by plan and input signature.

    Exposed for inspection and for benchmarks (``autotune_cache().clear()`` re-tunes).
    """
    return _AUTOTUNE_CACHE


def resolve_auto_impl(spec: REAFSpec | REAFPlan, device_type: str) -> str:
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


def candidates(spec: REAFSpec | REAFPlan) -> tuple[str, ...]:
    """Strategies worth timing: for ``G_M = 1`` gather and decompose_loop repeat others' convs.

    Strategies added to the table after the built-in ones are always candidates.
    """
    added = tuple(name for name in STRATEGIES if name not in _BUILT_IN)
    if spec.g_m == spec.g_i:
        return ("masked",)  # a dense convolution: every strategy is the same work
    if spec.g_m == 1:
        return ("masked", "decompose", "loop", *added)
    return ("masked", "decompose", "loop", "gather", "decompose_loop", *added)


def useful_macs(plan: REAFPlan, x: Tensor) -> int:
    """Multiply-accumulates of one call on the batched ``x`` (compact weights)."""
    h_out, w_out = plan.output_size(*x.shape[-2:])
    return (
        x.shape[0] * plan.out_channels * h_out * w_out * plan.merged_channels * plan.kernel_size**2
    )


def choose_impl(
    plan: REAFPlan, x: Tensor, weight: Tensor, bias: Tensor | None, needs_grad: bool
) -> str:
    """The strategy ``impl="auto"`` runs for ``plan`` on the batched input ``x``.

    ``x``, ``weight`` and ``bias`` are the tensors the convolution will see (already in
    the compute dtype); timing reads them and never writes them.
    """
    if not _can_time(x) or useful_macs(plan, x) < AUTOTUNE_MIN_MACS:
        return resolve_auto_impl(plan, x.device.type)
    key = (
        *plan.scalars(),
        bias is not None,
        tuple(x.shape),
        x.dtype,
        str(x.device),
        x.is_contiguous(memory_format=torch.channels_last),
        needs_grad,
    )
    if key not in _AUTOTUNE_CACHE:
        names, best = candidates(plan), 0
        if len(names) > 1:
            best = torch.ops.reaf_lightning.autotune(
                x, weight, bias, plan.index(), plan.scalars(), ",".join(names), needs_grad
            )
        _AUTOTUNE_CACHE[key] = names[int(best)]
    return _AUTOTUNE_CACHE[key]


def time_strategies(
    names: tuple[str, ...],
    plan: REAFPlan,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    needs_grad: bool,
    repeats: int = 3,
) -> int:
    """Index in ``names`` of the fastest strategy (forward, + backward if ``needs_grad``)."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    needs = (True, True, bias is not None)

    def timed(name: str) -> float:
        sync()
        start = time.perf_counter()
        y = STRATEGIES[name].forward(x, weight, bias, plan)
        if needs_grad:
            run_backward(name, torch.ones_like(y), x, weight, plan, needs)
        sync()
        return time.perf_counter() - start

    # Warm-up (first calls allocate and pick kernels). A candidate already 3x slower than
    # the best is not timed again: on a slow strategy (gather over 70 groups) the repeats
    # would cost seconds per layer shape and could not change the answer.
    warmup = {name: timed(name) for name in names}
    kept = tuple(c for c in names if warmup[c] <= 3 * min(warmup.values()))
    times: dict[str, list[float]] = {name: [] for name in kept}
    for _ in range(repeats):
        for name in kept:  # interleaved, so load bursts hit every candidate
            times[name].append(timed(name))
    # Minimum, not median: background load only ever adds time (as timeit argues).
    return names.index(min(kept, key=lambda name: min(times[name])))


def _autotune_kernel(x, weight, bias, index, scalars, names, needs_grad) -> Tensor:
    plan = REAFPlan.from_parts(scalars, index)
    with torch.no_grad():
        best = time_strategies(tuple(names.split(",")), plan, x, weight, bias, needs_grad)
    return torch.tensor(best)


_LIBRARY.impl("autotune", _autotune_kernel, "CompositeExplicitAutograd")


@torch.library.register_fake("reaf_lightning::autotune", lib=_LIBRARY)
def _autotune_fake(x, weight, bias, index, scalars, names, needs_grad) -> Tensor:
    return torch.empty((), dtype=torch.long)


def _can_time(x: Tensor) -> bool:
    return (
        x.device.type != "meta"
        and not torch.compiler.is_compiling()
        and not torch.are_deterministic_algorithms_enabled()
    )
