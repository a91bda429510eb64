"""Execution strategies of the REAF convolution: the same function (Eq. 5-6), other kernels.

:data:`STRATEGIES` is the table every caller reads (the layer, the autotuner, the
benchmarks): a name and a :class:`Strategy`, that is a ``forward(x, weight, bias,
plan)`` written in differentiable PyTorch operators and, optionally, a
``backward``. Which is fastest depends on the layer shape and the device
(``BENCHMARKS.md``):

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
* ``loop``: one convolution per output group, ``G_O`` kernel launches: Eq. 5-6
  as written.

Memory: every backward here is a function of the input and the compact weight
only (``aten.convolution_backward`` runs the kernels autograd would have run), so
a step keeps neither the scattered dense weight (``masked``, ``G_I / G_M`` times
the compact one) nor the ``G_M``-times input copy (``gather``) until backward.
:mod:`reaf_lightning.layers.dispatch` saves just those two tensors. A strategy
without a ``backward`` gets :func:`recompute_backward`: the same saving, paid for
with one more forward in the backward pass.

Adding a strategy: write ``forward(x, weight, bias, plan) -> Tensor`` and add
``STRATEGIES["name"] = Strategy(forward)``; ``impl="name"`` then selects it and
``auto`` times it (``docs/layers.md``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from reaf_lightning.layers.plan import REAFPlan

__all__ = [
    "STRATEGIES",
    "Strategy",
    "check_impl",
    "recompute_backward",
    "run_backward",
    "scatter_dense",
]

Grads = tuple[Tensor | None, Tensor | None, Tensor | None]
Needs = tuple[bool, bool, bool]


class Strategy(NamedTuple):
    """One way to compute the REAF convolution.

    Attributes:
        forward: ``(x, weight, bias, plan) -> y`` in differentiable operators
            (``torch.compile`` traces it; eager runs it inside one library operator).
        backward: ``(grad_y, x, weight, plan, needs) -> (grad_x, grad_weight, grad_bias)``,
            ``None`` where ``needs`` (x, weight, bias) is False; or ``None`` to use
            :func:`recompute_backward`.
    """

    forward: Callable[[Tensor, Tensor, Tensor | None, REAFPlan], Tensor]
    backward: Callable[[Tensor, Tensor, Tensor, REAFPlan, Needs], Grads] | None = None


def recompute_backward(
    forward: Callable, grad_out: Tensor, x: Tensor, weight: Tensor, plan: REAFPlan, needs: Needs
) -> Grads:
    """Gradients of any ``forward`` by re-running it under ``torch.func.vjp``.

    ``torch.func`` works where autograd is switched off (inside a library operator,
    where the autotuner times backward passes too).
    """
    _, vjp = torch.func.vjp(lambda xx, ww: forward(xx, ww, None, plan), x, weight)
    grad_x, grad_w = vjp(grad_out)
    grad_b = grad_out.sum((0, 2, 3)) if needs[2] else None
    return (grad_x if needs[0] else None), (grad_w if needs[1] else None), grad_b


def run_backward(
    name: str, grad_out: Tensor, x: Tensor, weight: Tensor, plan: REAFPlan, needs: Needs
) -> Grads:
    """Strategy ``name``'s backward, or the recomputing one where it has none."""
    strategy = STRATEGIES[name]
    grad_out = grad_out.to(x.dtype)
    if strategy.backward is None:
        return recompute_backward(strategy.forward, grad_out, x, weight, plan, needs)
    return strategy.backward(grad_out, x, weight, plan, needs)


def _conv_backward(grad_out: Tensor, x: Tensor, weight: Tensor, plan: REAFPlan, groups: int,
                   needs: Needs) -> Grads:  # fmt: skip
    stride, padding, dilation = ([v, v] for v in plan.conv_args)
    bias_sizes = [weight.shape[0]] if needs[2] else None
    grads = torch.ops.aten.convolution_backward(
        grad_out, x, weight, bias_sizes, stride, padding, dilation, False, [0, 0], groups,
        list(needs),
    )  # fmt: skip
    return tuple(g if need else None for g, need in zip(grads, needs))


# --- G_M = 1: a grouped convolution (gather and decompose reduce to it) ---------------------


def _grouped_forward(x: Tensor, weight: Tensor, bias: Tensor | None, plan: REAFPlan) -> Tensor:
    return F.conv2d(x, weight, bias, *plan.conv_args, plan.g_i)


def _grouped_backward(grad_out, x, weight, plan, needs) -> Grads:
    return _conv_backward(grad_out, x, weight, plan, plan.g_i, needs)


# --- masked -----------------------------------------------------------------------------------


def scatter_dense(weight: Tensor, plan: REAFPlan) -> Tensor:
    """Compact ``(C_out, M, k, k)`` weight -> dense ``(C_out, C_in, k, k)`` with zeros elsewhere."""
    c_out, _, k, k2 = weight.shape
    index = plan.dense_index[:, :, None, None].expand(-1, -1, k, k2)
    return weight.new_zeros(c_out, plan.in_channels, k, k2).scatter(1, index, weight)


def masked_forward(x: Tensor, weight: Tensor, bias: Tensor | None, plan: REAFPlan) -> Tensor:
    return F.conv2d(x, scatter_dense(weight, plan), bias, *plan.conv_args)


def masked_backward(grad_out, x, weight, plan, needs) -> Grads:
    grad_x, grad_dense, grad_b = _conv_backward(
        grad_out, x, scatter_dense(weight, plan), plan, 1, needs
    )
    grad_w = None
    if grad_dense is not None:
        index = plan.dense_index[:, :, None, None].expand(-1, -1, *weight.shape[2:])
        grad_w = grad_dense.gather(1, index)
    return grad_x, grad_w, grad_b


# --- gather -----------------------------------------------------------------------------------


def gather_forward(x: Tensor, weight: Tensor, bias: Tensor | None, plan: REAFPlan) -> Tensor:
    if plan.g_m == 1:
        return _grouped_forward(x, weight, bias, plan)
    gathered = x.index_select(1, plan.gather_index)
    return F.conv2d(gathered, weight, bias, *plan.conv_args, plan.g_o)


def gather_backward(grad_out, x, weight, plan, needs) -> Grads:
    if plan.g_m == 1:
        return _grouped_backward(grad_out, x, weight, plan, needs)
    gathered = x.index_select(1, plan.gather_index)
    grad_g, grad_w, grad_b = _conv_backward(grad_out, gathered, weight, plan, plan.g_o, needs)
    grad_x = None
    if grad_g is not None:  # each input channel feeds G_M combinations: sum their grads
        grad_x = torch.zeros_like(x).index_add_(1, plan.gather_index, grad_g)
    return grad_x, grad_w, grad_b


# --- loop -------------------------------------------------------------------------------------


def _combinations(plan: REAFPlan) -> itertools.combinations:
    return itertools.combinations(range(plan.g_i), plan.g_m)  # E_0 .. E_{G_O - 1}, in order


def loop_forward(x: Tensor, weight: Tensor, bias: Tensor | None, plan: REAFPlan) -> Tensor:
    groups = x.chunk(plan.g_i, 1)
    outputs = []
    for l, (e_l, w_l) in enumerate(zip(_combinations(plan), weight.split(plan.b_out))):
        a_l = torch.cat([groups[g] for g in e_l], 1)  # Eq. 5
        b_l = None if bias is None else bias[l * plan.b_out : (l + 1) * plan.b_out]
        outputs.append(F.conv2d(a_l, w_l, b_l, *plan.conv_args))  # Eq. 6
    return torch.cat(outputs, 1)


def loop_backward(grad_out, x, weight, plan, needs) -> Grads:
    """Per output group; input gradients summed per input group in a fixed order (no
    index_add_, so deterministic on CUDA)."""
    groups = x.chunk(plan.g_i, 1)
    grad_groups: list[Tensor | None] = [None] * plan.g_i
    grad_ws = []
    pieces = zip(_combinations(plan), grad_out.split(plan.b_out, 1), weight.split(plan.b_out))
    for e_l, g_l, w_l in pieces:
        a_l = torch.cat([groups[g] for g in e_l], 1)
        grad_a, grad_w, _ = _conv_backward(g_l, a_l, w_l, plan, 1, (*needs[:2], False))
        grad_ws.append(grad_w)
        if needs[0]:
            for g, part in zip(e_l, grad_a.chunk(plan.g_m, 1)):
                grad_groups[g] = part if grad_groups[g] is None else grad_groups[g] + part
    grad_x = torch.cat(grad_groups, 1) if needs[0] else None  # every group is in some E_l
    grad_w = torch.cat(grad_ws) if needs[1] else None
    return grad_x, grad_w, grad_out.sum((0, 2, 3)) if needs[2] else None


# --- decompose / decompose_loop -----------------------------------------------------------------


def decompose_weight(weight: Tensor, plan: REAFPlan) -> Tensor:
    """Compact ``(C_out, G_M * A, k, k)`` weight -> the ``(G_M * C_out, A, k, k)`` grouped weight.

    Row block ``s`` of the result is the ``(B, A, k, k)`` slice of the compact weight
    that connects input group ``j`` to output group ``o`` for slot ``s``;
    ``slot_rows[s] = o * G_M + m`` names it.
    """
    c_out, _, k, k2 = weight.shape
    g_o, g_m, b, a = plan.g_o, plan.g_m, plan.b_out, plan.a_in
    per_slot = weight.reshape(g_o, b, g_m, a, k, k2).transpose(1, 2).reshape(g_o * g_m, b, a, k, k2)
    return per_slot.index_select(0, plan.slot_rows).reshape(g_m * c_out, a, k, k2)


def _undecompose_grad(grad_grouped: Tensor, weight: Tensor, plan: REAFPlan) -> Tensor:
    """Inverse of :func:`decompose_weight`: a permutation of ``(B, A, k, k)`` blocks."""
    _, _, k, k2 = weight.shape
    g_o, g_m, b, a = plan.g_o, plan.g_m, plan.b_out, plan.a_in
    blocks = grad_grouped.reshape(g_o * g_m, b, a, k, k2)
    per_slot = blocks.index_select(0, torch.argsort(plan.slot_rows))
    return per_slot.reshape(g_o, g_m, b, a, k, k2).transpose(1, 2).reshape_as(weight)


def _partials(x: Tensor, grouped: Tensor, plan: REAFPlan, per_group: bool) -> Tensor:
    """The ``G_M * C_out`` partial outputs: one ``groups = G_I`` conv, or ``G_I`` dense convs.

    The two compute the same numbers. oneDNN's NCHW grouped convolution runs at about
    half the speed of the same work split into dense convolutions over channel slices
    at high resolution, and ahead of them at low resolution, so ``auto`` times both.
    """
    if not per_group:
        return F.conv2d(x, grouped, None, *plan.conv_args, plan.g_i)
    pairs = zip(x.chunk(plan.g_i, dim=1), grouped.chunk(plan.g_i, dim=0))
    return torch.cat([F.conv2d(xj, wj, None, *plan.conv_args) for xj, wj in pairs], 1)


def _sum_partials(partial: Tensor, plan: REAFPlan) -> Tensor:
    """Output channel ``c`` = sum over ``m`` of ``partial[:, partial_index[m * C_out + c]]``."""
    c_out = plan.out_channels
    if plan.in_order:  # the partials lie as (G_M, C_out): add channel slices (views), no gathers
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


def _decomposed(per_group: bool) -> Strategy:
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, plan: REAFPlan) -> Tensor:
        if plan.g_m == 1:
            return _grouped_forward(x, weight, bias, plan)
        partials = _partials(x, decompose_weight(weight, plan), plan, per_group)
        out = _sum_partials(partials, plan)
        return out if bias is None else out + bias[:, None, None]

    def backward(grad_out, x, weight, plan, needs) -> Grads:
        """Every partial feeds exactly one output channel, so its gradient is a copy of that
        output's gradient (``partial_source``): no scatter-add, deterministic on CUDA."""
        if plan.g_m == 1:
            return _grouped_backward(grad_out, x, weight, plan, needs)
        grouped = decompose_weight(weight, plan)
        if plan.in_order:  # partial (m, c) feeds output c: the gradient repeated G_M times
            grad_partial = torch.cat([grad_out] * plan.g_m, 1)
        else:
            grad_partial = grad_out.index_select(1, plan.partial_source)
        conv_needs = (needs[0], needs[1], False)
        if per_group:  # the backward of each dense conv over its channel slice
            slices = zip(
                grad_partial.chunk(plan.g_i, dim=1),
                x.chunk(plan.g_i, dim=1),
                grouped.chunk(plan.g_i, dim=0),
            )
            parts = [_conv_backward(g, xj, wj, plan, 1, conv_needs) for g, xj, wj in slices]
            grad_x = torch.cat([p[0] for p in parts], dim=1) if needs[0] else None
            grad_grouped = torch.cat([p[1] for p in parts], dim=0) if needs[1] else None
        else:
            grad_x, grad_grouped, _ = _conv_backward(
                grad_partial, x, grouped, plan, plan.g_i, conv_needs
            )
        grad_w = None if grad_grouped is None else _undecompose_grad(grad_grouped, weight, plan)
        return grad_x, grad_w, grad_out.sum((0, 2, 3)) if needs[2] else None

    return Strategy(forward, backward)


STRATEGIES: dict[str, Strategy] = {
    "masked": Strategy(masked_forward, masked_backward),
    "gather": Strategy(gather_forward, gather_backward),
    "decompose": _decomposed(per_group=False),
    "decompose_loop": _decomposed(per_group=True),
    "loop": Strategy(loop_forward, loop_backward),
}


def check_impl(impl: object) -> str:
    """``impl`` when it is ``"auto"`` or a name of :data:`STRATEGIES` (added ones included).

    The one check of an execution-strategy name, made where one enters: a
    ``REAFConv2d``, ``create_model`` and ``convert``.

    Raises:
        ValueError: naming the value and the valid names.
    """
    if impl != "auto" and not (isinstance(impl, str) and impl in STRATEGIES):
        raise ValueError(f"REAF impl={impl!r} is not one of auto, {', '.join(STRATEGIES)}")
    return impl
