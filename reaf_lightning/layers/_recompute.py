"""Memory-lean autograd for the ``masked`` and ``gather`` strategies of the REAF conv.

Plain autograd keeps, until backward, whatever the convolution consumed: for
``masked`` the scattered dense weight (``G_I / G_M`` times the compact one, ~57 MB
over REAF-ResNet50 4-3-4), for ``gather`` the ``G_M``-times copy of the input (as
large as ``G_M`` activations). Both are cheap to rebuild from what backward needs
anyway (the compact weight, the input), so these functions save only those and
recompute the rest in backward, where ``aten.convolution_backward`` runs the same
kernels autograd would have run.

Autocast: the inputs are cast once to the autocast dtype in forward (as autocast
would cast them for ``conv2d``), the convolution runs in that dtype, and the
gradients are cast back to the parameters' / input's dtypes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _compute_dtype(x: Tensor) -> torch.dtype:
    device_type = x.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def scatter_dense(weight: Tensor, dense_index: Tensor, in_channels: int) -> Tensor:
    """Compact ``(C_out, M, k, k)`` weight -> dense ``(C_out, C_in, k, k)`` with zeros elsewhere."""
    c_out, _, k, k2 = weight.shape
    index = dense_index[:, :, None, None].expand(-1, -1, k, k2)
    return weight.new_zeros(c_out, in_channels, k, k2).scatter(1, index, weight)


def _cast_and_remember(
    ctx, x: Tensor, weight: Tensor, bias: Tensor | None, conv_args: tuple
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Cast inputs to the compute dtype and store what backward needs besides tensors."""
    dtype = _compute_dtype(x)
    ctx.stride, ctx.padding, ctx.dilation = conv_args
    ctx.has_bias = bias is not None
    ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def _cast_grads(
    ctx, grad_x: Tensor | None, grad_w: Tensor | None, grad_b: Tensor | None
) -> tuple[Tensor | None, ...]:
    """Gradients back in the dtypes of the tensors they belong to."""
    grads = (grad_x, grad_w, grad_b)
    return tuple(None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes))


def _conv_backward(
    ctx, grad_out: Tensor, x: Tensor, weight: Tensor, groups: int, mask: list[bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    bias_sizes = [weight.shape[0]] if ctx.has_bias else None
    return torch.ops.aten.convolution_backward(
        grad_out.to(x.dtype),
        x,
        weight,
        bias_sizes,
        ctx.stride,
        ctx.padding,
        ctx.dilation,
        False,
        [0, 0],
        groups,
        mask,
    )


class MaskedConv2d(torch.autograd.Function):
    """``conv2d(x, scatter_dense(weight))`` saving the compact weight, not the dense one."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        dense_index: Tensor,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
    ) -> Tensor:
        xc, wc, bc = _cast_and_remember(ctx, x, weight, bias, (stride, padding, dilation))
        with torch.autocast(x.device.type, enabled=False):
            dense = scatter_dense(wc, dense_index, x.shape[1])
            out = torch.nn.functional.conv2d(xc, dense, bc, stride, padding, dilation)
        ctx.save_for_backward(xc, wc, dense_index)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        xc, wc, dense_index = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        dense = scatter_dense(wc, dense_index, xc.shape[1])
        grad_x, grad_dense, grad_b = _conv_backward(ctx, grad_out, xc, dense, 1, mask)
        grad_w = None
        if grad_dense is not None:
            k, k2 = wc.shape[2:]
            index = dense_index[:, :, None, None].expand(-1, -1, k, k2)
            grad_w = grad_dense.gather(1, index)
        return *_cast_grads(ctx, grad_x, grad_w, grad_b), None, None, None, None


class GatherConv2d(torch.autograd.Function):
    """``conv2d(x[:, index], weight, groups=G_O)`` saving ``x``, not the gathered copy."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        gather_index: Tensor,
        groups: int,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
    ) -> Tensor:
        xc, wc, bc = _cast_and_remember(ctx, x, weight, bias, (stride, padding, dilation))
        with torch.autocast(x.device.type, enabled=False):
            gathered = xc.index_select(1, gather_index)
            out = torch.nn.functional.conv2d(gathered, wc, bc, stride, padding, dilation, groups)
        ctx.save_for_backward(xc, wc, gather_index)
        ctx.groups = groups
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        xc, wc, gather_index = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        gathered = xc.index_select(1, gather_index)
        grad_g, grad_w, grad_b = _conv_backward(ctx, grad_out, gathered, wc, ctx.groups, mask)
        grad_x = None
        if grad_g is not None:  # each input channel feeds G_M combinations: sum their grads
            grad_x = torch.zeros_like(xc).index_add_(1, gather_index, grad_g)
        return *_cast_grads(ctx, grad_x, grad_w, grad_b), None, None, None, None, None


def decompose_weight(weight: Tensor, slot_rows: Tensor, g_m: int) -> Tensor:
    """Compact ``(C_out, G_M * A, k, k)`` weight -> the ``(G_M * C_out, A, k, k)`` grouped weight.

    Row block ``s`` of the result is the ``(B, A, k, k)`` slice of the compact weight
    that connects input group ``j`` to output group ``o`` for slot ``s = (j, o)``;
    ``slot_rows[s] = o * G_M + m`` names it, ``m`` being ``j``'s place in ``o``'s combination.
    """
    c_out, merged, k, k2 = weight.shape
    a = merged // g_m
    g_o = slot_rows.numel() // g_m
    b = c_out // g_o
    per_slot = weight.reshape(g_o, b, g_m, a, k, k2).transpose(1, 2).reshape(g_o * g_m, b, a, k, k2)
    return per_slot.index_select(0, slot_rows).reshape(g_m * c_out, a, k, k2)


def grouped_partials(
    x: Tensor, grouped: Tensor, g_i: int, per_group: bool, conv_args: tuple
) -> Tensor:
    """The ``G_M * C_out`` partial outputs: ``groups = G_I`` conv, or ``G_I`` dense convs.

    The two compute the same numbers. oneDNN's NCHW grouped convolution runs at
    about half the speed of the same work split into dense convolutions over channel
    slices at high resolution, and ahead of them at low resolution, so ``auto`` times
    both (``decompose`` / ``decompose_loop``).
    """
    if not per_group:
        return torch.nn.functional.conv2d(x, grouped, None, *conv_args, g_i)
    pairs = zip(x.chunk(g_i, dim=1), grouped.chunk(g_i, dim=0))
    return torch.cat([torch.nn.functional.conv2d(xj, wj, None, *conv_args) for xj, wj in pairs], 1)


def sum_partials(partial: Tensor, partial_index: Tensor, g_m: int) -> Tensor:
    """Output channel ``c`` = sum over ``m`` of ``partial[:, partial_index[m * C_out + c]]``."""
    c_out = partial_index.numel() // g_m
    out = partial.index_select(1, partial_index[:c_out])
    for m in range(1, g_m):
        out = out + partial.index_select(1, partial_index[m * c_out : (m + 1) * c_out])
    return out


def decomposed_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    slot_rows: Tensor,
    partial_index: Tensor,
    g_i: int,
    g_m: int,
    per_group: bool,
    conv_args: tuple,
) -> Tensor:
    """The ``decompose`` strategy in plain ops: what ``torch.compile`` traces and what
    :class:`DecomposedConv2d` runs in forward."""
    grouped = decompose_weight(weight, slot_rows, g_m)
    out = sum_partials(grouped_partials(x, grouped, g_i, per_group, conv_args), partial_index, g_m)
    return out if bias is None else out + bias[:, None, None]


class DecomposedConv2d(torch.autograd.Function):
    """REAF conv as a ``groups = G_I`` conv plus a sum, saving only ``x`` and the compact weight.

    A convolution is linear in its input channels, so output group ``o`` is the sum
    over its ``G_M`` input groups ``j`` of ``conv(x_j, W_oj)``. Stacking, per input
    group ``j``, the ``W_oj`` of every output group that reads ``j`` gives one grouped
    convolution with ``G_I`` groups of ``A`` inputs each: exactly the REAF FLOPs, in
    ``G_I`` wide groups (run as one grouped conv, or ``per_group`` as ``G_I`` dense
    convs over channel slices: see :func:`grouped_partials`). The ``G_M * C_out`` partial outputs
    are then summed ``G_M`` at a time. Backward needs no scatter-add: every partial
    channel feeds exactly one output channel, so its gradient is a gather
    (``partial_source``), which also keeps this deterministic on CUDA.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        slot_rows: Tensor,
        partial_index: Tensor,
        partial_source: Tensor,
        g_i: int,
        g_m: int,
        per_group: bool,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
    ) -> Tensor:
        conv_args = (stride, padding, dilation)
        xc, wc, bc = _cast_and_remember(ctx, x, weight, bias, conv_args)
        with torch.autocast(x.device.type, enabled=False):
            out = decomposed_conv2d(
                xc, wc, bc, slot_rows, partial_index, g_i, g_m, per_group, conv_args
            )
        ctx.save_for_backward(xc, wc, slot_rows, partial_source)
        ctx.g_i, ctx.g_m, ctx.per_group = g_i, g_m, per_group
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        xc, wc, slot_rows, partial_source = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grouped = decompose_weight(wc, slot_rows, ctx.g_m)
        grad_partial = grad_out.to(xc.dtype).index_select(1, partial_source)
        mask = [need_x, need_w, False]
        if ctx.per_group:  # the backward of each dense conv over its channel slice
            slices = zip(
                grad_partial.chunk(ctx.g_i, dim=1),
                xc.chunk(ctx.g_i, dim=1),
                grouped.chunk(ctx.g_i, dim=0),
            )
            parts = [_conv_backward(ctx, g, xj, wj, 1, mask) for g, xj, wj in slices]
            grad_x = torch.cat([p[0] for p in parts], dim=1) if need_x else None
            grad_grouped = torch.cat([p[1] for p in parts], dim=0) if need_w else None
        else:
            grad_x, grad_grouped, _ = _conv_backward(ctx, grad_partial, xc, grouped, ctx.g_i, mask)
        grad_w = None
        if grad_grouped is not None:  # undo decompose_weight: a permutation of (B, A, k, k) blocks
            c_out, merged, k, k2 = wc.shape
            a, g_o = merged // ctx.g_m, slot_rows.numel() // ctx.g_m
            b = c_out // g_o
            blocks = grad_grouped.reshape(g_o * ctx.g_m, b, a, k, k2)
            per_slot = blocks.index_select(0, torch.argsort(slot_rows))  # inverse permutation
            grad_w = per_slot.reshape(g_o, ctx.g_m, b, a, k, k2).transpose(1, 2).reshape_as(wc)
        grad_b = grad_out.sum((0, 2, 3)) if need_b else None
        nones = (None,) * 9
        return *_cast_grads(ctx, grad_x, grad_w, grad_b), *nones
