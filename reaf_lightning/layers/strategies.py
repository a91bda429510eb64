"""Execution strategies of the REAF convolution: the same function (Eq. 5-6), other kernels.

:func:`reaf_lightning.layers.reaf_conv.reaf_conv2d` (strategy ``loop``) runs one
convolution per output group, ``G_O`` kernel launches. The other four compute
the same numbers from the same compact weight with fewer, larger kernels; which
is fastest depends on the layer shape and the device (``BENCHMARKS.md``):

* ``masked``: scatter the compact weight into a zero dense weight and run one
  dense convolution. Wastes ``G_I / G_M`` of the FLOPs, but dense convolutions
  are the best-tuned kernels on every backend.
* ``gather``: ``index_select`` the input channels of every combination (a
  ``G_M``-times larger copy of the input) and run one grouped convolution
  with ``groups = G_O``. Exact FLOPs, extra memory.
* ``decompose``: split the sum of Eq. 6 over input groups instead of gathering
  them. Output group ``o`` is ``sum_{j in E_o} conv(x_j, W_oj)``, so one grouped
  convolution with ``groups = G_I`` (input group ``j`` against the stacked ``W_oj``
  of every output group that reads it) yields ``G_M * C_out`` partial outputs,
  summed ``G_M`` at a time. Exact FLOPs in ``G_I`` wide groups.
* ``decompose_loop``: the same, with the grouped convolution run as ``G_I``
  dense convolutions over channel slices (faster on oneDNN at high resolution).

Memory: plain autograd would keep, until backward, whatever the convolution
consumed: the scattered dense weight (``masked``, ``G_I / G_M`` times the compact
one), the ``G_M``-times input copy (``gather``) or the decomposed weight. The
autograd functions below save only the input and the compact weight and rebuild
the rest in backward, where ``aten.convolution_backward`` runs the kernels
autograd would have run. Under ``torch.compile`` the plain ops are traced instead
and AOTAutograd's partitioner decides what to keep.

Autocast: the inputs are cast once to the autocast dtype in forward (as autocast
casts them for ``conv2d``), the convolution runs in that dtype, and the gradients
are cast back to the dtypes of the tensors they belong to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:
    from reaf_lightning.layers.reaf_conv import REAFConv2d

__all__ = ["index_buffers", "partials_in_order", "run", "scatter_dense"]


def index_buffers(combinations: list[tuple[int, ...]], a_in: int, b_out: int) -> dict[str, Tensor]:
    """Index tensors of every strategy, derived once from the combinations ``E_l``.

    * ``dense_index[c]``: input channel of every compact weight column of output channel
      ``c`` (``masked`` scatters with it); its rows per group, ``gather_index``, list
      the input channels of every combination (``gather`` selects them).
    * ``decompose``: a *slot* is an (input group ``j``, output group ``o`` reading ``j``)
      pair. A ``groups = G_I`` convolution yields the partials of input group ``j`` as one
      contiguous block, so slots are ordered by ``j``, and within it by (``m``, ``o``),
      ``m`` being ``j``'s place in ``E_o``. ``slot_rows[s] = o * G_M + m`` is the
      compact-weight block slot ``s`` uses; ``partial_index[m * C_out + o * B + b]`` is the
      partial channel holding the ``m``-th term of output channel ``o * B + b``, and
      ``partial_source`` its inverse (which output channel each partial feeds).
    """
    g_m, g_o = len(combinations[0]), len(combinations)
    channels = torch.tensor(
        [[g * a_in + a for g in combo for a in range(a_in)] for combo in combinations]
    )  # (G_O, G_M * A_in): input channels of each output group
    slots = _slots(combinations)
    slot_of = {pair: s for s, pair in enumerate(slots)}
    b = torch.arange(b_out)
    return {
        "dense_index": channels.repeat_interleave(b_out, dim=0),
        "gather_index": channels.reshape(-1),
        "slot_rows": torch.tensor([o * g_m + m for o, m in slots]),
        "partial_index": torch.cat(
            [slot_of[(o, m)] * b_out + b for m in range(g_m) for o in range(g_o)]
        ),
        "partial_source": torch.cat([o * b_out + b for o, _ in slots]),
    }


def _slots(combinations: list[tuple[int, ...]]) -> list[tuple[int, int]]:
    """The (output group ``o``, place ``m``) slots in the order the grouped conv yields them."""
    g_m, g_o = len(combinations[0]), len(combinations)
    return sorted(
        ((o, m) for o in range(g_o) for m in range(g_m)),
        key=lambda om: (combinations[om[0]][om[1]], om[1], om[0]),
    )


def partials_in_order(combinations: list[tuple[int, ...]]) -> bool:
    """Whether the partials already lie as ``(G_M, C_out)``, so summing them needs no gather.

    True for ``G_M = 1``, ``G_M = G_I`` and ``G_M = G_I - 1`` (4-3-4, 8-7-8, ...): with
    combinations in lexicographic order, the ``m``-th groups of all combinations, read
    for ``m = 0, 1, ...``, never decrease, so the (``j``-ordered) slots are in (``m``, ``o``)
    order. Decided from the combinations alone, so it also holds for a layer built on the
    ``meta`` device.
    """
    g_m, g_o = len(combinations[0]), len(combinations)
    return _slots(combinations) == [(o, m) for m in range(g_m) for o in range(g_o)]


def run(impl: str, layer: REAFConv2d, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Strategy ``impl`` (not ``loop``, which is the reference forward) on ``layer``'s shape.

    ``weight`` and ``bias`` are passed separately so the autotuner can time detached copies.
    """
    lean = not torch.compiler.is_compiling() and torch.is_grad_enabled()
    conv_args = (layer.stride, layer.padding, layer.dilation)
    pairs = tuple((v, v) for v in conv_args)
    if impl == "masked":
        if lean:
            return MaskedConv2d.apply(x, weight, bias, layer.dense_index, *pairs)
        return F.conv2d(x, layer.dense_weight(weight), bias, *conv_args)
    if layer.g_m == 1 and impl in ("gather", "decompose"):  # one partial per output: grouped conv
        return F.conv2d(x, weight, bias, *conv_args, layer.g_i)
    if impl == "gather":
        if lean:
            return GatherConv2d.apply(x, weight, bias, layer.gather_index, layer.g_o, *pairs)
        return F.conv2d(x.index_select(1, layer.gather_index), weight, bias, *conv_args, layer.g_o)
    if impl in ("decompose", "decompose_loop"):
        plan = _DecomposePlan(
            layer.slot_rows,
            layer.partial_index,
            layer.partial_source,
            layer.g_i,
            layer.g_m,
            per_group=impl == "decompose_loop",
            in_order=layer.partials_in_order,
        )
        if lean:
            return DecomposedConv2d.apply(x, weight, bias, plan, *pairs)
        return decomposed_conv2d(x, weight, bias, plan, conv_args)
    raise ValueError(
        f"REAF strategy {impl!r} is not one of masked, gather, decompose, decompose_loop "
        "(loop is the reference forward, reaf_conv2d)"
    )


def scatter_dense(weight: Tensor, dense_index: Tensor, in_channels: int) -> Tensor:
    """Compact ``(C_out, M, k, k)`` weight -> dense ``(C_out, C_in, k, k)`` with zeros elsewhere."""
    c_out, _, k, k2 = weight.shape
    index = dense_index[:, :, None, None].expand(-1, -1, k, k2)
    return weight.new_zeros(c_out, in_channels, k, k2).scatter(1, index, weight)


def _cast_and_remember(
    ctx, x: Tensor, weight: Tensor, bias: Tensor | None, conv_args: tuple
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Cast inputs to the compute dtype and store what backward needs besides tensors."""
    device_type = x.device.type
    dtype = x.dtype
    if torch.is_autocast_enabled(device_type) and x.dtype != torch.float64:
        dtype = torch.get_autocast_dtype(device_type)
    ctx.stride, ctx.padding, ctx.dilation = conv_args
    ctx.has_bias = bias is not None
    ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def _cast_grads(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
    """Gradients back in the dtypes of the tensors they belong to."""
    return tuple(None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes))


def _conv_backward(
    ctx, grad_out: Tensor, x: Tensor, weight: Tensor, groups: int, mask: list[bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    bias_sizes = [weight.shape[0]] if ctx.has_bias else None
    return torch.ops.aten.convolution_backward(
        grad_out.to(x.dtype), x, weight, bias_sizes, ctx.stride, ctx.padding, ctx.dilation,
        False, [0, 0], groups, mask,
    )  # fmt: skip


class MaskedConv2d(torch.autograd.Function):
    """``conv2d(x, scatter_dense(weight))`` saving the compact weight, not the dense one."""

    @staticmethod
    def forward(ctx, x, weight, bias, dense_index, stride, padding, dilation) -> Tensor:
        xc, wc, bc = _cast_and_remember(ctx, x, weight, bias, (stride, padding, dilation))
        with torch.autocast(x.device.type, enabled=False):
            dense = scatter_dense(wc, dense_index, x.shape[1])
            out = F.conv2d(xc, dense, bc, stride, padding, dilation)
        ctx.save_for_backward(xc, wc, dense_index)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        xc, wc, dense_index = ctx.saved_tensors
        dense = scatter_dense(wc, dense_index, xc.shape[1])
        mask = list(ctx.needs_input_grad[:3])
        grad_x, grad_dense, grad_b = _conv_backward(ctx, grad_out, xc, dense, 1, mask)
        grad_w = None
        if grad_dense is not None:
            index = dense_index[:, :, None, None].expand(-1, -1, *wc.shape[2:])
            grad_w = grad_dense.gather(1, index)
        return *_cast_grads(ctx, grad_x, grad_w, grad_b), None, None, None, None


class GatherConv2d(torch.autograd.Function):
    """``conv2d(x[:, index], weight, groups=G_O)`` saving ``x``, not the gathered copy."""

    @staticmethod
    def forward(ctx, x, weight, bias, gather_index, groups, stride, padding, dilation) -> Tensor:
        xc, wc, bc = _cast_and_remember(ctx, x, weight, bias, (stride, padding, dilation))
        with torch.autocast(x.device.type, enabled=False):
            gathered = xc.index_select(1, gather_index)
            out = F.conv2d(gathered, wc, bc, stride, padding, dilation, groups)
        ctx.save_for_backward(xc, wc, gather_index)
        ctx.groups = groups
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        xc, wc, gather_index = ctx.saved_tensors
        gathered = xc.index_select(1, gather_index)
        mask = list(ctx.needs_input_grad[:3])
        grad_g, grad_w, grad_b = _conv_backward(ctx, grad_out, gathered, wc, ctx.groups, mask)
        grad_x = None
        if grad_g is not None:  # each input channel feeds G_M combinations: sum their grads
            grad_x = torch.zeros_like(xc).index_add_(1, gather_index, grad_g)
        return *_cast_grads(ctx, grad_x, grad_w, grad_b), None, None, None, None, None


class _DecomposePlan(NamedTuple):
    """What ``decompose`` needs besides the tensors of the call (see :func:`index_buffers`)."""

    slot_rows: Tensor
    partial_index: Tensor
    partial_source: Tensor
    g_i: int
    g_m: int
    per_group: bool
    in_order: bool


def decompose_weight(weight: Tensor, slot_rows: Tensor, g_m: int) -> Tensor:
    """Compact ``(C_out, G_M * A, k, k)`` weight -> the ``(G_M * C_out, A, k, k)`` grouped weight.

    Row block ``s`` of the result is the ``(B, A, k, k)`` slice of the compact weight
    that connects input group ``j`` to output group ``o`` for slot ``s``;
    ``slot_rows[s] = o * G_M + m`` names it.
    """
    c_out, merged, k, k2 = weight.shape
    a, g_o = merged // g_m, slot_rows.numel() // g_m
    b = c_out // g_o
    per_slot = weight.reshape(g_o, b, g_m, a, k, k2).transpose(1, 2).reshape(g_o * g_m, b, a, k, k2)
    return per_slot.index_select(0, slot_rows).reshape(g_m * c_out, a, k, k2)


def _undecompose_grad(grad_grouped: Tensor, weight: Tensor, slot_rows: Tensor, g_m: int) -> Tensor:
    """Inverse of :func:`decompose_weight`: a permutation of ``(B, A, k, k)`` blocks."""
    c_out, merged, k, k2 = weight.shape
    a, g_o = merged // g_m, slot_rows.numel() // g_m
    blocks = grad_grouped.reshape(g_o * g_m, c_out // g_o, a, k, k2)
    per_slot = blocks.index_select(0, torch.argsort(slot_rows))
    return per_slot.reshape(g_o, g_m, c_out // g_o, a, k, k2).transpose(1, 2).reshape_as(weight)


def grouped_partials(x: Tensor, grouped: Tensor, plan: _DecomposePlan, conv_args: tuple) -> Tensor:
    """The ``G_M * C_out`` partial outputs: one ``groups = G_I`` conv, or ``G_I`` dense convs.

    The two compute the same numbers. oneDNN's NCHW grouped convolution runs at about
    half the speed of the same work split into dense convolutions over channel slices
    at high resolution, and ahead of them at low resolution, so ``auto`` times both.
    """
    if not plan.per_group:
        return F.conv2d(x, grouped, None, *conv_args, plan.g_i)
    pairs = zip(x.chunk(plan.g_i, dim=1), grouped.chunk(plan.g_i, dim=0))
    return torch.cat([F.conv2d(xj, wj, None, *conv_args) for xj, wj in pairs], 1)


def sum_partials(partial: Tensor, plan: _DecomposePlan) -> Tensor:
    """Output channel ``c`` = sum over ``m`` of ``partial[:, partial_index[m * C_out + c]]``."""
    c_out = partial.shape[1] // plan.g_m
    if plan.in_order:  # the partials lie as (G_M, C_out): add channel slices (views), no gathers
        if plan.g_m == 1:
            return partial
        terms = partial.chunk(plan.g_m, dim=1)
        out = terms[0] + terms[1]
        for term in terms[2:]:
            out.add_(term)
        return out
    index = plan.partial_index
    out = partial.index_select(1, index[:c_out])
    for m in range(1, plan.g_m):
        out = out + partial.index_select(1, index[m * c_out : (m + 1) * c_out])
    return out


def decomposed_conv2d(
    x: Tensor, weight: Tensor, bias: Tensor | None, plan: _DecomposePlan, conv_args: tuple
) -> Tensor:
    """``decompose`` in plain ops: what ``torch.compile`` traces and what the autograd
    function below runs in forward."""
    grouped = decompose_weight(weight, plan.slot_rows, plan.g_m)
    out = sum_partials(grouped_partials(x, grouped, plan, conv_args), plan)
    return out if bias is None else out + bias[:, None, None]


class DecomposedConv2d(torch.autograd.Function):
    """``decompose`` saving only ``x`` and the compact weight.

    Backward needs no scatter-add: every partial channel feeds exactly one output
    channel, so its gradient is a copy of that output's gradient (``partial_source``),
    which also keeps this deterministic on CUDA.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, plan: _DecomposePlan, stride, padding, dilation) -> Tensor:
        conv_args = (stride, padding, dilation)
        xc, wc, bc = _cast_and_remember(ctx, x, weight, bias, conv_args)
        with torch.autocast(x.device.type, enabled=False):
            out = decomposed_conv2d(xc, wc, bc, plan, conv_args)
        ctx.save_for_backward(xc, wc)
        ctx.plan = plan
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        xc, wc = ctx.saved_tensors
        plan = ctx.plan
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grouped = decompose_weight(wc, plan.slot_rows, plan.g_m)
        grad_out = grad_out.to(xc.dtype)
        if plan.in_order:  # partial (m, c) feeds output c: the gradient repeated G_M times
            grad_partial = torch.cat([grad_out] * plan.g_m, 1) if plan.g_m > 1 else grad_out
        else:
            grad_partial = grad_out.index_select(1, plan.partial_source)
        mask = [need_x, need_w, False]
        if plan.per_group:  # the backward of each dense conv over its channel slice
            slices = zip(
                grad_partial.chunk(plan.g_i, dim=1),
                xc.chunk(plan.g_i, dim=1),
                grouped.chunk(plan.g_i, dim=0),
            )
            parts = [_conv_backward(ctx, g, xj, wj, 1, mask) for g, xj, wj in slices]
            grad_x = torch.cat([p[0] for p in parts], dim=1) if need_x else None
            grad_grouped = torch.cat([p[1] for p in parts], dim=0) if need_w else None
        else:
            grad_x, grad_grouped, _ = _conv_backward(ctx, grad_partial, xc, grouped, plan.g_i, mask)
        grad_w = None
        if grad_grouped is not None:
            grad_w = _undecompose_grad(grad_grouped, wc, plan.slot_rows, plan.g_m)
        grad_b = grad_out.sum((0, 2, 3)) if need_b else None
        return *_cast_grads(ctx, grad_x, grad_w, grad_b), None, None, None, None
