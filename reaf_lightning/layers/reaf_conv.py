"""The REAF convolution (paper §III-A; SPEC.md §1).

A dense convolution computes every output channel from all input channels.
REAF splits the ``C_in`` input channels into ``G_I`` equal groups and gives each
of the ``G_O = C(G_I, G_M)`` output-channel groups its own combination of
``G_M`` input groups, enumerated in ``itertools.combinations`` order. Output
group ``l`` is a convolution over the concatenation of the input groups in
combination ``E_l``, so only ``C_out * G_M * C_in / G_I * k * k`` weights exist.

Special cases: ``G_M = 1`` (and so ``G_I = G_O = g``) is ``nn.Conv2d(groups=g)``;
``1-1-1`` is the dense convolution.

Five execution strategies compute the same function from the same compact
parameters; which one is fastest depends on the shape and the device (see
``BENCHMARKS.md``):

* ``masked``: scatter the compact weight into a zero dense weight and run one
  dense convolution. Wastes ``G_I / G_M`` of the FLOPs, but dense convolutions
  are the best-tuned kernels on every backend.
* ``gather``: ``index_select`` the input channels of every combination (a
  ``G_M``-times larger copy of the input) and run one grouped convolution
  with ``groups = G_O``. Exact FLOPs, extra memory.
* ``decompose``: split the sum over input groups instead of gathering them.
  Output group ``o`` is ``sum_{j in E_o} conv(x_j, W_oj)``, so one grouped
  convolution with ``groups = G_I`` (input group ``j`` against the stacked
  ``W_oj`` of every output group that reads it) yields ``G_M * C_out`` partial
  outputs, summed ``G_M`` at a time. Exact FLOPs in ``G_I`` wide groups; a
  transient ``G_M``-times copy of the output, nothing extra kept for backward.
* ``decompose_loop``: the same, with the grouped convolution run as ``G_I``
  dense convolutions over channel slices (faster on oneDNN at high resolution).
* ``loop``: one convolution per output group over its gathered input. Exact
  FLOPs, ``G_O`` kernel launches; the readable reference.

``impl="auto"`` (the default) times them all on the first call with each new
input signature, like ``torch.backends.cudnn.benchmark``, and caches the winner.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reaf_lightning.layers._recompute import (
    DecomposedConv2d,
    GatherConv2d,
    MaskedConv2d,
    decomposed_conv2d,
    scatter_dense,
)

__all__ = [
    "REAF_IMPLS",
    "REAFConv2d",
    "REAFSpec",
    "autotune_cache",
    "parse_reaf",
    "resolve_auto_impl",
]

REAF_IMPLS = ("auto", "masked", "gather", "decompose", "decompose_loop", "loop")


class REAFSpec(tuple):
    """A validated ``(G_I, G_M, G_O)`` triple, printed in the paper's notation ``"4-3-4"``."""

    def __new__(cls, g_i: int, g_m: int, g_o: int | None = None) -> REAFSpec:
        for name, value in (("G_I", g_i), ("G_M", g_m)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"REAF {name} must be a positive integer, got {value!r}")
        if g_m > g_i:
            raise ValueError(
                f"REAF {g_i}-{g_m}-{g_o if g_o is not None else '?'}: G_M={g_m} must not exceed "
                f"G_I={g_i} (each output group merges G_M of the G_I input groups)"
            )
        expected = math.comb(g_i, g_m)
        if g_o is None:
            g_o = expected
        if not isinstance(g_o, int) or isinstance(g_o, bool) or g_o != expected:
            raise ValueError(f"REAF {g_i}-{g_m}-{g_o}: G_O must be C({g_i}, {g_m}) = {expected}")
        return super().__new__(cls, (g_i, g_m, g_o))

    @property
    def g_i(self) -> int:
        return self[0]

    @property
    def g_m(self) -> int:
        return self[1]

    @property
    def g_o(self) -> int:
        return self[2]

    def __str__(self) -> str:
        return f"{self[0]}-{self[1]}-{self[2]}"

    def __repr__(self) -> str:
        return f"REAFSpec('{self}')"

    def __reduce__(self):  # keep pickling (DDP spawn, checkpoints) working for a tuple subclass
        return (REAFSpec, tuple(self))


def parse_reaf(reaf: str | Sequence[int] | REAFSpec) -> REAFSpec:
    """Parse ``"4-3-4"``, ``"4-3"`` (G_O implied), ``(4, 3, 4)`` or ``(4, 3)`` into a ``REAFSpec``.

    Raises:
        ValueError: on malformed text or an invalid combination, naming the value.
    """
    if isinstance(reaf, REAFSpec):
        return reaf
    if isinstance(reaf, str):
        parts = reaf.strip().split("-")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (2, 3):
            raise ValueError(
                f"REAF setting {reaf!r} is not of the form 'G_I-G_M-G_O' (e.g. '4-3-4') "
                "or 'G_I-G_M'"
            )
        return REAFSpec(*numbers)
    if isinstance(reaf, Sequence) and len(reaf) in (2, 3):
        return REAFSpec(*(int(v) for v in reaf))
    raise ValueError(f"REAF setting {reaf!r} must be a 'G_I-G_M-G_O' string or a 2/3-tuple of ints")


def resolve_auto_impl(spec: REAFSpec, device_type: str) -> str:
    """The strategy ``auto`` falls back to when it cannot time candidates.

    Used under ``torch.compile`` tracing, on the meta device, when deterministic
    algorithms are requested (a timing-dependent choice would make runs differ in
    the last bits) and for calls too small to time. On the CPU the rule follows
    BENCHMARKS.md: ``decompose`` (exact FLOPs in ``G_I`` wide groups) was fastest or
    within a few percent on every REAF-ResNet50 layer shape of Table 3. On CUDA,
    where no measurement exists yet, dense kernels are assumed to stay ahead while
    ``masked`` wastes at most 4x (G_M / G_I >= 1/4).
    """
    if spec.g_m == spec.g_i:
        return "masked"  # a dense convolution: every strategy is the same work
    if device_type == "cuda" and spec.g_m / spec.g_i >= 0.25:
        return "masked"
    return "decompose"


_AUTOTUNE_CACHE: dict[tuple, str] = {}

# Calls below this many multiply-accumulates take microseconds: timing them measures
# noise, and costs more than any choice could save. They use the fixed rule.
AUTOTUNE_MIN_MACS = 10_000_000


def autotune_cache() -> dict[tuple, str]:
    """The process-wide ``impl="auto"`` decisions, keyed by layer and input signature.

    Exposed for inspection and for benchmarks (``autotune_cache().clear()`` re-tunes).
    """
    return _AUTOTUNE_CACHE


def _can_autotune(x: Tensor) -> bool:
    return (
        x.device.type != "meta"
        and not torch.compiler.is_compiling()
        and not torch.are_deterministic_algorithms_enabled()
    )


def _decomposition_indices(
    combinations: Sequence[tuple[int, ...]], out_per_group: int
) -> dict[str, Tensor]:
    """Index tensors of the ``decompose`` strategy.

    A *slot* is an (input group ``j``, output group ``o`` reading ``j``) pair; slots
    are ordered by ``j``, then ``o``, because a ``groups = G_I`` convolution must
    produce the partial outputs of input group ``j`` as one contiguous block. With
    ``m`` = the place of ``j`` in combination ``o`` and ``B`` = ``out_per_group``:

    * ``slot_rows[s] = o * G_M + m``: the compact-weight block slot ``s`` uses;
    * ``partial_index[m * C_out + o * B + b]``: the partial channel holding the
      ``m``-th term of output channel ``o * B + b`` (forward gathers and sums);
    * ``partial_source[s * B + b] = o * B + b``: the output channel partial channel
      ``s * B + b`` feeds (backward gathers the output gradient with it).
    """
    g_m = len(combinations[0])
    g_i = max(max(combo) for combo in combinations) + 1
    slots = [
        (o, combo.index(j))
        for j in range(g_i)
        for o, combo in enumerate(combinations)
        if j in combo
    ]
    slot_of = {pair: s for s, pair in enumerate(slots)}
    b = torch.arange(out_per_group)
    partial_index = torch.cat(
        [slot_of[(o, m)] * out_per_group + b for m in range(g_m) for o in range(len(combinations))]
    )
    partial_source = torch.cat([o * out_per_group + b for o, _ in slots])
    slot_rows = torch.tensor([o * g_m + m for o, m in slots], dtype=torch.long)
    return {
        "slot_rows": slot_rows,
        "partial_index": partial_index,
        "partial_source": partial_source,
    }


class REAFConv2d(nn.Module):
    """Convolution where each output-channel group sees its own combination of input groups.

    Args:
        in_channels: ``C_in``; must be divisible by ``g_i``.
        out_channels: ``C_out``; must be divisible by ``g_o``.
        kernel_size: square kernel size ``k``.
        g_i: number of input-channel groups ``G_I``.
        g_m: number of input groups merged per output group ``G_M``.
        g_o: number of output groups; defaults to, and must equal, ``C(g_i, g_m)``.
        stride: convolution stride.
        padding: zero padding; ``None`` means ``dilation * (k - 1) // 2`` ("same" for stride 1).
        dilation: kernel dilation.
        bias: add a learnable bias per output channel.
        impl: ``"auto"``, ``"masked"``, ``"gather"``, ``"decompose"``, ``"decompose_loop"``
            or ``"loop"`` (see the module docstring).
            All give the same numbers; ``auto`` times them once per input signature and
            keeps the fastest (see :meth:`resolved_impl`).

    The weight has the compact shape ``(C_out, G_M * C_in / G_I, k, k)``: rows
    ``l * B_out:(l + 1) * B_out`` are output group ``l``, whose input channels
    are the concatenation (in increasing group order) of the groups in
    combination ``l``. For ``G_M = 1`` this is exactly ``nn.Conv2d(groups=g)``'s
    weight layout, so weights can be copied between the two.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        g_i: int,
        g_m: int,
        g_o: int | None = None,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        bias: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        spec = REAFSpec(g_i, g_m, g_o)
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"REAF {spec}: channels must be positive, got in={in_channels}, out={out_channels}"
            )
        if in_channels % spec.g_i:
            raise ValueError(
                f"REAF {spec}: in_channels={in_channels} is not divisible by G_I={spec.g_i}"
            )
        if out_channels % spec.g_o:
            raise ValueError(
                f"REAF {spec}: out_channels={out_channels} is not divisible by G_O={spec.g_o}"
            )
        if impl not in REAF_IMPLS:
            raise ValueError(f"REAF impl={impl!r} is not one of {', '.join(REAF_IMPLS)}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.spec = spec
        self.stride = stride
        self.padding = dilation * (kernel_size - 1) // 2 if padding is None else padding
        self.dilation = dilation
        self.impl = impl
        self.in_per_group = in_channels // spec.g_i  # A_in
        self.out_per_group = out_channels // spec.g_o  # B_out
        self.merged_channels = spec.g_m * self.in_per_group

        self.weight = nn.Parameter(
            torch.empty(out_channels, self.merged_channels, kernel_size, kernel_size)
        )
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None

        combos = list(itertools.combinations(range(spec.g_i), spec.g_m))
        channels = torch.tensor(
            [
                [g * self.in_per_group + a for g in combo for a in range(self.in_per_group)]
                for combo in combos
            ],
            dtype=torch.long,
        )  # (G_O, G_M * A_in): input channels of each output group
        self.combinations: tuple[tuple[int, ...], ...] = tuple(combos)
        # Buffers follow .to(device) but are not learnable; not persistent, because
        # they are derived from the constructor arguments and must not bloat checkpoints.
        self.register_buffer("group_channels", channels, persistent=False)
        self.register_buffer("gather_index", channels.reshape(-1), persistent=False)
        # Input channel of every compact weight column, per output channel: scatter target.
        self.register_buffer(
            "dense_index",
            channels.repeat_interleave(self.out_per_group, dim=0),
            persistent=False,
        )
        for name, index in _decomposition_indices(combos, self.out_per_group).items():
            self.register_buffer(name, index, persistent=False)
        self.reset_parameters()

    @property
    def g_i(self) -> int:
        return self.spec.g_i

    @property
    def g_m(self) -> int:
        return self.spec.g_m

    @property
    def g_o(self) -> int:
        return self.spec.g_o

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-out), as torchvision initialises ResNet convs.

        Fan-out is ``C_out * k * k`` for every strategy: each input unit still
        feeds the same number of output units per group it belongs to, so the
        REAF conv keeps the variance a dense conv of the same output would have.
        """
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            fan_in = self.merged_channels * self.kernel_size * self.kernel_size
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def resolved_impl(self, x: Tensor) -> str:
        """The strategy a forward on ``x`` runs (``auto``: timed once per signature, then cached).

        ``auto`` behaves like ``torch.backends.cudnn.benchmark``: the first call
        with a new (layer shape, input shape, dtype, device, memory format, grad
        mode) signature times forward (+ backward when gradients are needed) of
        every strategy on scratch copies, and the fastest is cached for all
        layers with that signature. See :func:`resolve_auto_impl` for when it
        falls back to a fixed rule instead.
        """
        if self.impl != "auto":
            return self.impl
        if not _can_autotune(x) or self._useful_macs(x) < AUTOTUNE_MIN_MACS:
            return resolve_auto_impl(self.spec, x.device.type)
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        key = (
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            tuple(self.spec),
            self.stride,
            self.padding,
            self.dilation,
            self.bias is not None,
            tuple(x.shape),
            x.dtype,
            str(x.device),
            x.is_contiguous(memory_format=torch.channels_last),
            needs_grad,
        )
        impl = _AUTOTUNE_CACHE.get(key)
        if impl is None:
            impl = self._time_strategies(x, needs_grad)
            _AUTOTUNE_CACHE[key] = impl
        return impl

    def _useful_macs(self, x: Tensor) -> int:
        """Multiply-accumulates of this call (compact weights), from the input shape."""
        h, w = x.shape[-2:]
        span = self.dilation * (self.kernel_size - 1)
        h_out = (h + 2 * self.padding - span - 1) // self.stride + 1
        w_out = (w + 2 * self.padding - span - 1) // self.stride + 1
        per_output = self.merged_channels * self.kernel_size**2
        return x.shape[0] * self.out_channels * h_out * w_out * per_output

    def _time_strategies(self, x: Tensor, needs_grad: bool, repeats: int = 3) -> str:
        """Fastest strategy on detached copies of the inputs; parameters are never touched."""
        x = x.detach().requires_grad_(needs_grad)
        weight = self.weight.detach().requires_grad_(needs_grad)
        bias = None if self.bias is None else self.bias.detach()
        if self.g_m == self.g_i:
            return "masked"  # a dense convolution: every strategy is the same work
        candidates = ("masked", "decompose", "loop")
        if self.g_m > 1:  # for G_M = 1 they run decompose's and loop's convolutions
            candidates += ("gather", "decompose_loop")
        sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

        def run(impl: str) -> None:
            with torch.enable_grad() if needs_grad else torch.no_grad():
                y = self._run(impl, x, weight, bias)
                if needs_grad:
                    torch.autograd.grad(y.sum(), (x, weight))

        def timed(impl: str) -> float:
            sync()
            start = time.perf_counter()
            run(impl)
            sync()
            return time.perf_counter() - start

        # Warm-up (first calls allocate and pick kernels). A candidate already 3x slower
        # than the best is not timed again: on a slow strategy (gather over 70 groups)
        # the repeats would cost seconds per layer shape and could not change the answer.
        warmup = {impl: timed(impl) for impl in candidates}
        candidates = tuple(c for c in candidates if warmup[c] <= 3 * min(warmup.values()))
        times: dict[str, list[float]] = {impl: [] for impl in candidates}
        for _ in range(repeats):
            for impl in candidates:  # interleaved, so load bursts hit every candidate
                times[impl].append(timed(impl))
        # Minimum, not median: background load only ever adds time (as timeit argues).
        return min(candidates, key=lambda impl: min(times[impl]))

    def dense_weight(self, weight: Tensor | None = None) -> Tensor:
        """The equivalent dense ``(C_out, C_in, k, k)`` weight, zero where no connection exists.

        Differentiable: gradients flow back to the compact ``weight`` (default: ``self.weight``).
        """
        weight = self.weight if weight is None else weight
        return scatter_dense(weight, self.dense_index, self.in_channels)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None, groups: int = 1) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def forward(self, x: Tensor) -> Tensor:
        return self._run(self.resolved_impl(x), x, self.weight, self.bias)

    def _run(self, impl: str, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # Eager autograd would keep the dense weight (masked), the G_M-times input copy
        # (gather) or the decomposed weight (decompose*) alive until backward; the
        # recomputing functions keep only the input and the compact weight. Under
        # torch.compile the plain ops are traced and AOTAutograd's partitioner decides.
        lean = not torch.compiler.is_compiling() and torch.is_grad_enabled()
        pair = (self.stride, self.stride), (self.padding, self.padding)
        dilation = (self.dilation, self.dilation)
        if impl == "masked":
            if lean:
                return MaskedConv2d.apply(x, weight, bias, self.dense_index, *pair, dilation)
            return self._conv(x, self.dense_weight(weight), bias)
        if impl == "gather":
            if self.g_m == 1:  # an ordinary grouped conv: the gather would be the identity
                return self._conv(x, weight, bias, groups=self.g_o)
            if lean:
                return GatherConv2d.apply(
                    x, weight, bias, self.gather_index, self.g_o, *pair, dilation
                )
            return self._conv(x.index_select(1, self.gather_index), weight, bias, groups=self.g_o)
        if impl == "decompose" and self.g_m == 1:  # one partial per output: a grouped conv
            return self._conv(x, weight, bias, groups=self.g_i)
        if impl == "decompose" or (impl == "decompose_loop" and self.g_m > 1):
            per_group = impl == "decompose_loop"
            if lean:
                return DecomposedConv2d.apply(
                    x, weight, bias, self.slot_rows, self.partial_index, self.partial_source,
                    self.g_i, self.g_m, per_group, *pair, dilation,
                )  # fmt: skip
            conv_args = (self.stride, self.padding, self.dilation)
            return decomposed_conv2d(
                x, weight, bias, self.slot_rows, self.partial_index, self.g_i, self.g_m,
                per_group, conv_args,
            )  # fmt: skip
        # loop (and decompose_loop for G_M = 1, where the two loops are the same convs)
        b = self.out_per_group
        outputs = []
        for l in range(self.g_o):
            group_bias = None if bias is None else bias[l * b : (l + 1) * b]
            group_input = self._select_channels(x, l)
            outputs.append(self._conv(group_input, weight[l * b : (l + 1) * b], group_bias))
        return torch.cat(outputs, dim=1)

    def _select_channels(self, x: Tensor, l: int) -> Tensor:
        """Input of output group ``l``: a free slice when its input groups are adjacent."""
        combo = self.combinations[l]
        if combo[-1] - combo[0] == len(combo) - 1:
            a = self.in_per_group
            return x[:, combo[0] * a : (combo[-1] + 1) * a]
        return x.index_select(1, self.group_channels[l])

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"reaf={self.spec}, stride={self.stride}, padding={self.padding}"
        )
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        return s + f", impl={self.impl}"
