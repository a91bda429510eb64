"""The REAF convolution (paper §III-A; SPEC.md §1).

A dense convolution computes every output channel from all input channels.
REAF splits the ``C_in`` input channels into ``G_I`` equal groups and gives each
of the ``G_O = C(G_I, G_M)`` output-channel groups its own combination of
``G_M`` input groups, enumerated in ``itertools.combinations`` order. Output
group ``l`` is a convolution over the concatenation of the input groups in
combination ``E_l``, so only ``C_out * G_M * C_in / G_I * k * k`` weights exist.

Special cases: ``G_M = 1`` (and so ``G_I = G_O = g``) is ``nn.Conv2d(groups=g)``;
``1-1-1`` is the dense convolution.

Three execution strategies compute the same function from the same compact
parameters; which one is fastest depends on the shape and the device (see
``BENCHMARKS.md``):

* ``masked``: scatter the compact weight into a zero dense weight and run one
  dense convolution. Wastes ``G_I / G_M`` of the FLOPs, but dense convolutions
  are the best-tuned kernels on every backend.
* ``gather``: ``index_select`` the input channels of every combination (a
  ``G_M``-times larger copy of the input) and run one grouped convolution
  with ``groups = G_O``. Exact FLOPs, extra memory.
* ``loop``: one convolution per output group over its gathered input. Exact
  FLOPs, ``G_O`` kernel launches.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["REAF_IMPLS", "REAFConv2d", "REAFSpec", "parse_reaf", "resolve_auto_impl"]

REAF_IMPLS = ("auto", "masked", "gather", "loop")


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


def resolve_auto_impl(spec: REAFSpec, kernel_size: int, device_type: str) -> str:
    """The strategy ``impl="auto"`` runs, from a cost model fitted to BENCHMARKS.md.

    The masked strategy runs the best-tuned kernel (one dense convolution) but
    does ``G_I / G_M`` times the useful FLOPs; the loop pays one kernel launch
    and one input gather per output group; the grouped convolution of
    ``gather`` is poorly optimised on CPU (oneDNN) but fine on cuDNN.

    Measured on CPU (BENCHMARKS.md, REAF-ResNet50 layer shapes): masked wins
    while the density ``G_M / G_I`` is at least 1/2 (waste <= 2x), and the loop
    wins for sparse settings. On CUDA the dense kernel is so much faster per
    FLOP that masked wins up to a waste of about 4x; beyond that the grouped
    convolution of ``gather`` avoids launching ``G_O`` kernels.
    """
    if spec.g_m == spec.g_i:
        return "masked"  # a dense convolution: every strategy is the same work
    density = spec.g_m / spec.g_i
    if device_type == "cuda":
        return "masked" if density >= 0.25 else "gather"
    return "masked" if density >= 0.5 else "loop"


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
        impl: ``"auto"``, ``"masked"``, ``"gather"`` or ``"loop"`` (see module docstring).
            All give the same numbers; ``auto`` picks by :func:`resolve_auto_impl`.

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

    def resolved_impl(self, device_type: str | None = None) -> str:
        """The strategy a forward on ``device_type`` (default: the weight's) will run."""
        if self.impl != "auto":
            return self.impl
        device_type = device_type or self.weight.device.type
        return resolve_auto_impl(self.spec, self.kernel_size, device_type)

    def dense_weight(self) -> Tensor:
        """The equivalent dense ``(C_out, C_in, k, k)`` weight, zero where no connection exists."""
        k = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels, self.in_channels, k, k)
        index = self.dense_index[:, :, None, None].expand(-1, -1, k, k)
        return dense.scatter(1, index, self.weight)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None, groups: int = 1) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def forward(self, x: Tensor) -> Tensor:
        impl = self.resolved_impl(x.device.type)
        if impl == "masked":
            return self._conv(x, self.dense_weight(), self.bias)
        if impl == "gather":
            gathered = x.index_select(1, self.gather_index)
            return self._conv(gathered, self.weight, self.bias, groups=self.g_o)
        return self._forward_loop(x)

    def _forward_loop(self, x: Tensor) -> Tensor:
        b = self.out_per_group
        outputs = []
        for l, channels in enumerate(self.group_channels):
            group_input = self._select_channels(x, l, channels)
            bias = None if self.bias is None else self.bias[l * b : (l + 1) * b]
            outputs.append(self._conv(group_input, self.weight[l * b : (l + 1) * b], bias))
        return torch.cat(outputs, dim=1)

    def _select_channels(self, x: Tensor, l: int, channels: Tensor) -> Tensor:
        """Input of output group ``l``: a free slice when its input groups are adjacent."""
        combo = self.combinations[l]
        if combo[-1] - combo[0] == len(combo) - 1:
            a = self.in_per_group
            return x[:, combo[0] * a : (combo[-1] + 1) * a]
        return x.index_select(1, channels)

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
