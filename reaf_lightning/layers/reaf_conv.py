"""The REAF convolution (paper §III-B, Eq. 5-6): the definition, then the layer.

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

:class:`REAFConv2d` computes the same function with one of the execution
strategies of :mod:`reaf_lightning.layers.strategies`, from a plan of index
tensors (:mod:`reaf_lightning.layers.plan`), picked per layer shape by the
autotuner (:mod:`reaf_lightning.layers.autotune`) and called through
:mod:`reaf_lightning.layers.dispatch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reaf_lightning.layers.arguments import check_ints, resolve_padding, square
from reaf_lightning.layers.dispatch import reaf_conv, register_flop_formulas, resolve_impl
from reaf_lightning.layers.plan import INDEX_FIELDS, REAFPlan, make_plan
from reaf_lightning.layers.spec import REAFSpec, is_int, parse_reaf
from reaf_lightning.layers.strategies import check_impl, scatter_dense

__all__ = ["REAFConv2d", "REAFSpec", "parse_reaf", "reaf_conv2d"]


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
        kernel_size: ``k`` or ``(k, k)``: kernels are square (see below).
        g_i: number of input-channel groups ``G_I``; or the whole setting, a
            :class:`REAFSpec` (or its text ``"4-3-4"``), with ``g_m`` and ``g_o`` left out.
        g_m: number of input groups merged per output group ``G_M``.
        g_o: number of output groups; defaults to, and must equal, ``C(g_i, g_m)``.
        stride: ``s`` or ``(s, s)``.
        padding: ``p``, ``(p, p)``, ``"same"`` or ``"valid"`` as in ``nn.Conv2d``; ``None``
            (ours, the default) means ``dilation * (k - 1) // 2``, "same" for stride 1 and
            odd ``k``.
        dilation: ``d`` or ``(d, d)``.
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

    Kernel size, stride, padding and dilation take ``nn.Conv2d``'s forms, but only
    square ones: the paper's networks use nothing else, and the strategies and the
    cost counts are written for a ``k x k`` kernel. A non-square value is refused.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        g_i: int | REAFSpec | str,
        g_m: int | None = None,
        g_o: int | None = None,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str | None = None,
        dilation: int | tuple[int, int] = 1,
        bias: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if g_m is None and g_o is None and not is_int(g_i):
            spec = parse_reaf(g_i)  # the whole setting; a REAFSpec is taken as it is
        else:
            spec = REAFSpec(g_i, g_m, g_o)
        kernel_size = square(spec, "kernel_size", kernel_size)
        stride = square(spec, "stride", stride)
        dilation = square(spec, "dilation", dilation)
        check_ints(
            spec,
            positive={
                "in_channels": in_channels,
                "out_channels": out_channels,
                "kernel_size": kernel_size,
                "stride": stride,
                "dilation": dilation,
            },
            non_negative={},
        )
        padding, self._pad_end, self._padding_repr = resolve_padding(
            spec, padding, kernel_size, stride, dilation
        )
        if in_channels % spec.g_i:
            raise ValueError(
                f"REAF {spec}: in_channels={in_channels} is not divisible by G_I={spec.g_i}"
            )
        if out_channels % spec.g_o:
            raise ValueError(
                f"REAF {spec}: out_channels={out_channels} is not divisible by G_O={spec.g_o}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.spec = spec
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.impl = check_impl(impl)
        self.in_per_group = in_channels // spec.g_i  # A_in
        self.out_per_group = out_channels // spec.g_o  # B_out
        self.merged_channels = spec.g_m * self.in_per_group
        self.weight = nn.Parameter(
            torch.empty(out_channels, self.merged_channels, kernel_size, kernel_size)
        )
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        plan = make_plan(spec, in_channels, out_channels, kernel_size, stride, padding, dilation)
        self._plan_scalars = plan.scalars()
        # The plan's index tensors as buffers, so they follow .to(device); not persistent:
        # they derive from the constructor arguments and must not bloat checkpoints.
        for name, index in zip(INDEX_FIELDS, plan.index()):
            self.register_buffer(name, index, persistent=False)
        register_flop_formulas()  # before any FlopCounterMode that could see this layer
        self.reset_parameters()

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, reaf: str | Sequence[int] | REAFSpec, impl: str = "auto"
    ) -> REAFConv2d:
        """A REAF convolution with ``conv``'s geometry (channels, kernel, stride, padding,
        dilation, bias), on its device and dtype.

        Weights: kept exactly where the REAF layer has ``conv``'s connectivity, that is
        ``G_M = G_I`` (every output reads every input: a dense conv, e.g. ``1-1-1``) from
        a dense ``conv``, and ``g-1-g`` from ``conv`` with ``groups=g``. Otherwise REAF
        connects each output group to other inputs than ``conv`` did, no dense weight
        maps onto the compact one, and the new layer is initialised afresh by
        :meth:`reset_parameters` (Kaiming-normal, fan-out; a bias from
        ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``): train or fine-tune it.

        Raises:
            ValueError: ``conv`` is grouped and ``reaf`` is not ``groups-1-groups`` (REAF
                replaces channel grouping; build a ``REAFConv2d`` to change the
                connectivity on purpose), pads other than with zeros, is not square, or
                its channels do not divide into ``reaf``'s groups.
        """
        spec = parse_reaf(reaf)
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"REAFConv2d.from_conv needs an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1 and tuple(spec) != (conv.groups, 1, conv.groups):
            raise ValueError(
                f"REAFConv2d.from_conv: {conv} has groups={conv.groups}; REAF {spec} would "
                "replace its grouping, which only "
                f"{conv.groups}-1-{conv.groups} (G_M = 1, G_I = groups) reproduces"
            )
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"REAFConv2d.from_conv: {conv} pads with padding_mode={conv.padding_mode!r}; "
                "REAFConv2d pads with zeros only"
            )
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            spec,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=conv.bias is not None,
            impl=impl,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        if spec.g_m == spec.g_i or spec.g_m == 1 and spec.g_i == conv.groups:
            with torch.no_grad():  # same connectivity: the weight layouts coincide
                layer.weight.copy_(conv.weight)
                if conv.bias is not None:
                    layer.bias.copy_(conv.bias)
        return layer

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
        padded = 2 * self.padding + self._pad_end
        return tuple((s + padded - span - 1) // self.stride + 1 for s in (height, width))

    @property
    def plan(self) -> REAFPlan:
        """Shape, geometry and index tensors (on this layer's device) the strategies read."""
        return REAFPlan.from_parts(self._plan_scalars, [getattr(self, n) for n in INDEX_FIELDS])

    def resolved_impl(self, x: Tensor) -> str:
        """The strategy a forward on batched ``x`` runs (``auto``: timed once per signature)."""
        return resolve_impl(x, self.weight, self.bias, self.plan, self.impl)

    def dense_weight(self, weight: Tensor | None = None) -> Tensor:
        """The equivalent dense ``(C_out, C_in, k, k)`` weight, zero where no connection exists.

        Differentiable: gradients flow back to the compact ``weight`` (default: ``self.weight``).
        """
        return scatter_dense(self.weight if weight is None else weight, self.plan)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.dim() == 3:  # unbatched (C, H, W), as nn.Conv2d accepts
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if self._pad_end:  # "same" with an even span: nn.Conv2d pads the end one more
            x = F.pad(x, (0, self._pad_end, 0, self._pad_end))
        return reaf_conv(x, self.weight, self.bias, self.plan, self.impl)

    def compute(self, impl: str, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """Strategy ``impl`` (or ``"auto"``) on a batched, already padded input with the given
        parameters in place of the layer's (tests and benchmarks compare strategies this way)."""
        return reaf_conv(x, weight, bias, self.plan, check_impl(impl))

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
        """``nn.Conv2d``'s text (its rules for what to show) plus the REAF setting."""
        pair = lambda v: f"({v}, {v})"  # noqa: E731
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={pair(self.kernel_size)}, "
            f"stride={pair(self.stride)}"
        )
        if self._padding_repr != "0":
            s += f", padding={self._padding_repr}"
        if self.dilation != 1:
            s += f", dilation={pair(self.dilation)}"
        if self.bias is None:
            s += ", bias=False"
        s += f", reaf={self.spec}"
        return s if self.impl == "auto" else s + f", impl={self.impl}"
