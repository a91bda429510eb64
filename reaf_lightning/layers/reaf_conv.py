"""The REAF convolution (paper §III-B, Eq. 5-6).

A dense convolution computes every output channel from all ``C_in`` input
channels (Eq. 2). REAF splits the input channels into ``G_I`` groups of
``A_in = C_in / G_I`` channels and enumerates the ``G_O = C(G_I, G_M)``
combinations ``E_0, ..., E_{G_O - 1}`` of ``G_M`` groups. Output channel ``j``
belongs to output group ``l = floor(j / B_out)`` and is computed from the
concatenation of the input groups in ``E_l`` only:

    A_j = Index(I, E_l, A_in)                                  (Eq. 5)
    O_j = sum_{i < A_in * G_M} A_ji * W_ji                     (Eq. 6)

so only ``C_out * G_M * A_in * k * k`` weights exist. :func:`reaf_conv2d` is
those two equations in code and the definition every execution strategy is
tested against. ``G_M = 1`` is ``nn.Conv2d(groups=G_I)``; ``1-1-1`` is the
dense convolution.

Our choices where the paper is silent: combinations are enumerated in
``itertools.combinations`` order (lexicographic), and the groups inside
``E_l`` are concatenated in increasing order; the weight is initialised as
torchvision initialises ResNet convolutions.

:class:`REAFConv2d` computes the same function with one of five execution
strategies (``reaf_lightning.layers.strategies``), picked per layer shape by an
autotuner (``reaf_lightning.layers.autotune``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reaf_lightning.layers import autotune, strategies

__all__ = ["REAF_IMPLS", "REAFConv2d", "REAFSpec", "parse_reaf", "reaf_conv2d"]


REAF_IMPLS = ("auto", "masked", "gather", "decompose", "decompose_loop", "loop")


class REAFSpec(tuple):
    """A validated ``(G_I, G_M, G_O)`` triple, printed in the paper's notation ``"4-3-4"``."""

    def __new__(cls, g_i: int, g_m: int, g_o: int | None = None) -> REAFSpec:
        for name, value in (("G_I", g_i), ("G_M", g_m)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"REAF {name} must be a positive integer, got {value!r}")
        if g_m > g_i:
            raise ValueError(
                f"REAF {g_i}-{g_m}-{g_o if g_o is not None else '?'}: G_M={g_m} must not exceed "
                f"G_I={g_i} (each output group merges G_M of the G_I input groups)"
            )
        expected = math.comb(g_i, g_m)
        g_o = expected if g_o is None else g_o
        if not _is_int(g_o) or g_o != expected:
            raise ValueError(f"REAF {g_i}-{g_m}-{g_o}: G_O must be C({g_i}, {g_m}) = {expected}")
        return super().__new__(cls, (g_i, g_m, g_o))

    g_i = property(lambda self: self[0], doc="number of input-channel groups G_I")
    g_m = property(lambda self: self[1], doc="input groups merged per output group G_M")
    g_o = property(lambda self: self[2], doc="number of output-channel groups G_O")

    def combinations(self) -> list[tuple[int, ...]]:
        """``E_0 .. E_{G_O-1}``: the input groups of each output group (ours: lexicographic)."""
        return list(itertools.combinations(range(self.g_i), self.g_m))

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
        try:
            numbers = [int(p) for p in reaf.strip().split("-")]
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


def reaf_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    spec: REAFSpec,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
) -> Tensor:
    """The REAF convolution as the paper writes it (Eq. 5-6): one convolution per output group.

    Args:
        x: input ``I`` of shape ``(N, C_in, H, W)``.
        weight: compact weight ``(C_out, G_M * A_in, k, k)``; rows ``l * B_out:(l + 1) * B_out``
            are output group ``l``.
        bias: optional ``(C_out,)`` bias.
        spec: the ``G_I-G_M-G_O`` setting.
        stride: as in ``F.conv2d``.
        padding: as in ``F.conv2d``.
        dilation: as in ``F.conv2d``.
    """
    input_groups = x.chunk(spec.g_i, dim=1)  # I as G_I groups of A_in channels
    b_out = weight.shape[0] // spec.g_o
    outputs = []
    for l, e_l in enumerate(spec.combinations()):
        # Eq. 5: A_j = Index(I, E_l, A_in) for every channel j of output group l
        a_l = torch.cat([input_groups[g] for g in e_l], 1) if len(e_l) > 1 else input_groups[e_l[0]]
        rows = slice(l * b_out, (l + 1) * b_out)
        # Eq. 6: O_j = sum_i A_ji * W_ji, a convolution over the G_M * A_in merged channels
        b_l = None if bias is None else bias[rows]
        outputs.append(F.conv2d(a_l, weight[rows], b_l, stride, padding, dilation))
    return torch.cat(outputs, dim=1)


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
        impl: ``"auto"`` or one of the strategies ``"masked"``, ``"gather"``, ``"decompose"``,
            ``"decompose_loop"``, ``"loop"`` (see ``reaf_lightning.layers.strategies``). All give
            the same numbers; ``auto`` times them once per input signature and keeps the fastest.

    The weight has the compact shape ``(C_out, G_M * C_in / G_I, k, k)``: rows
    ``l * B_out:(l + 1) * B_out`` are output group ``l``, whose input channels are
    the groups of ``E_l`` concatenated in increasing order. For ``G_M = 1`` this is
    exactly ``nn.Conv2d(groups=g)``'s weight layout, so weights can be copied between
    the two. Like ``nn.Conv2d``, the layer takes ``(N, C_in, H, W)`` or unbatched
    ``(C_in, H, W)`` floating-point input and refuses anything else with one line.
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
        _check_ints(
            spec,
            positive={
                "in_channels": in_channels,
                "out_channels": out_channels,
                "kernel_size": kernel_size,
                "stride": stride,
                "dilation": dilation,
            },
            non_negative={"padding": padding} if padding is not None else {},
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
        # Index tensors of the strategies: buffers follow .to(device); not persistent,
        # because they derive from the constructor arguments and must not bloat checkpoints.
        for name, index in strategies.index_buffers(
            spec.combinations(), self.in_per_group, self.out_per_group
        ).items():
            self.register_buffer(name, index, persistent=False)
        self.partials_in_order = strategies.partials_in_order(spec.combinations())
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
        """Kaiming-normal (fan-out), as torchvision initialises ResNet convs (ours).

        Fan-out is ``C_out * k * k``: each input unit still feeds the same number of
        output units per group it belongs to, so the REAF conv keeps the variance a
        dense conv of the same output would have.
        """
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            bound = 1 / math.sqrt(self.merged_channels * self.kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial output size for an ``height x width`` input (``nn.Conv2d``'s formula)."""
        span = self.dilation * (self.kernel_size - 1)
        return tuple((s + 2 * self.padding - span - 1) // self.stride + 1 for s in (height, width))

    def resolved_impl(self, x: Tensor) -> str:
        """The strategy a forward on ``x`` runs (``auto``: timed once per signature, cached)."""
        return self.impl if self.impl != "auto" else autotune.choose_impl(self, x)

    def dense_weight(self, weight: Tensor | None = None) -> Tensor:
        """The equivalent dense ``(C_out, C_in, k, k)`` weight, zero where no connection exists.

        Differentiable: gradients flow back to the compact ``weight`` (default: ``self.weight``).
        """
        weight = self.weight if weight is None else weight
        return strategies.scatter_dense(weight, self.dense_index, self.in_channels)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.dim() == 3:  # unbatched (C, H, W), as nn.Conv2d accepts
            return self.forward(x.unsqueeze(0)).squeeze(0)
        return self.compute(self.resolved_impl(x), x, self.weight, self.bias)

    def compute(self, impl: str, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """Strategy ``impl`` on a batched input with the given parameters (the autotuner times
        detached copies this way). ``loop`` is the reference forward, :func:`reaf_conv2d`."""
        if impl == "loop":
            return reaf_conv2d(x, weight, bias, self.spec, self.stride, self.padding, self.dilation)
        return strategies.run(impl, self, x, weight, bias)

    def _check_input(self, x: Tensor) -> None:
        """Refuse, in one line, what no strategy could compute (they would differ in how)."""
        if x.dim() not in (3, 4):
            raise ValueError(
                f"REAFConv2d expects a 4-D (N, C, H, W) or 3-D unbatched (C, H, W) input, "
                f"got shape {tuple(x.shape)}"
            )
        channels = x.shape[-3]
        if channels != self.in_channels:
            raise ValueError(
                f"REAFConv2d({self.spec}) expects {self.in_channels} input channels, "
                f"got {channels} (input shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"REAFConv2d input dtype {x.dtype} is not supported: convolutions need a "
                "floating-point input (float32, float64, float16, bfloat16)"
            )
        # Checked only on a mismatch: autocast has no state for some device types (meta).
        if x.dtype != self.weight.dtype and not (
            x.dtype != torch.float64 and torch.is_autocast_enabled(x.device.type)
        ):
            raise TypeError(
                f"REAFConv2d input dtype {x.dtype} does not match its weight dtype "
                f"{self.weight.dtype}: convert one to the other or run under torch.autocast"
            )
        out_h, out_w = self.output_size(*x.shape[-2:])
        if out_h < 1 or out_w < 1:
            raise ValueError(
                f"REAFConv2d input of spatial size {tuple(x.shape[-2:])} is smaller than its "
                f"kernel ({self.kernel_size}, dilation {self.dilation}, padding {self.padding})"
            )

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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_ints(spec: REAFSpec, positive: dict, non_negative: dict) -> None:
    """One line per bad constructor argument, naming it and what is valid (ints, as square)."""
    for name, value in {**positive, **non_negative}.items():
        if not _is_int(value):
            raise TypeError(
                f"REAF {spec}: {name} must be an int (square kernels only), got {value!r}"
            )
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"REAF {spec}: {name} must be a positive integer, got {value}")
    for name, value in non_negative.items():
        if value < 0:
            raise ValueError(f"REAF {spec}: {name} must be >= 0, got {value}")
