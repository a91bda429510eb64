"""How a REAF convolution call reaches a strategy: autocast, autotune, autograd, FLOP counts.

Eager calls run the chosen strategy inside two library operators,
``reaf_lightning::reaf_conv2d`` and ``reaf_lightning::reaf_conv2d_backward``, with
a FLOP formula registered for each (``torch.utils.flop_counter.register_flop_formula``).
So ``FlopCounterMode`` (and Lightning's model summary, which uses it) counts a REAF
convolution at its true cost, ``2 * C_out * G_M * A_in * k * k`` FLOPs per output
position forward (Eq. 6; ``reaf_lightning.models.complexity`` counts the same MACs),
and twice that per requested gradient backward, as it counts ``nn.Conv2d``: the
dense convolution of ``masked`` or the trial convolutions of the autotuner never
show. The autograd function saves only the input and the compact weight.

Under ``torch.compile``, ``torch.export`` and ``torch.jit.trace`` the strategy's plain
operators are traced instead, so the compiler sees ordinary convolutions and its partitioner
decides what to keep for backward.

Autocast: the inputs are cast once to the autocast dtype (as autocast casts them
for ``conv2d``); the casts' own backward returns gradients in the parameters' dtypes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from reaf_lightning.layers.autotune import choose_impl, resolve_auto_impl
from reaf_lightning.layers.plan import REAFPlan
from reaf_lightning.layers.strategies import STRATEGIES, run_backward

__all__ = ["reaf_conv", "register_flop_formulas", "resolve_impl"]

_LIBRARY = torch.library.Library("reaf_lightning", "FRAGMENT")
_LIBRARY.define(
    "reaf_conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor[] index, int[] scalars, "
    "str impl) -> Tensor"
)
_LIBRARY.define(
    "reaf_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor[] index, "
    "int[] scalars, str impl, bool[] needs) -> Tensor[]"
)


def reaf_conv(x: Tensor, weight: Tensor, bias: Tensor | None, plan: REAFPlan, impl: str) -> Tensor:
    """The REAF convolution of the batched ``x`` by strategy ``impl`` (or ``"auto"``, already
    checked by :func:`~reaf_lightning.layers.strategies.check_impl` where it entered)."""
    if _tracing():
        name = impl if impl != "auto" else resolve_auto_impl(plan, x.device.type)
        return STRATEGIES[name].forward(x, weight, bias, plan)
    register_flop_formulas()  # for a caller without a REAFConv2d; a flag check otherwise
    x, weight, bias = _compute_dtype(x, weight, bias)
    needs_grad = _needs_grad(x, weight, bias)
    name = impl if impl != "auto" else choose_impl(plan, x, weight, bias, needs_grad)
    if needs_grad:
        return _REAFConvFunction.apply(x, weight, bias, plan, name)
    return torch.ops.reaf_lightning.reaf_conv2d(x, weight, bias, plan.index(), plan.scalars(), name)


def resolve_impl(x: Tensor, weight: Tensor, bias: Tensor | None, plan: REAFPlan, impl: str) -> str:
    """The strategy :func:`reaf_conv` runs for these arguments (``auto``: tuned, cached)."""
    if impl != "auto":
        return impl
    if _tracing():
        return resolve_auto_impl(plan, x.device.type)
    x, weight, bias = _compute_dtype(x, weight, bias)
    return choose_impl(plan, x, weight, bias, _needs_grad(x, weight, bias))


def _tracing() -> bool:
    """Under ``torch.compile``/``torch.export`` or ``torch.jit.trace`` (the TorchScript ONNX
    exporter): record plain operators, which every backend and exporter knows."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _compute_dtype(x: Tensor, weight: Tensor, bias: Tensor | None):
    device_type = x.device.type
    if (
        x.dtype == torch.float64
        or not torch.amp.is_autocast_available(device_type)  # e.g. meta
        or not torch.is_autocast_enabled(device_type)
    ):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device_type)
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def _needs_grad(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class _REAFConvFunction(torch.autograd.Function):
    """Saves ``x`` and the compact weight; backward is the strategy's, as an operator."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan: REAFPlan, name: str) -> Tensor:
        ctx.save_for_backward(x, weight, *plan.index())
        ctx.scalars, ctx.name, ctx.has_bias = plan.scalars(), name, bias is not None
        return torch.ops.reaf_lightning.reaf_conv2d(
            x, weight, bias, plan.index(), ctx.scalars, name
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight, *index = ctx.saved_tensors
        needs = [*ctx.needs_input_grad[:2], ctx.has_bias and ctx.needs_input_grad[2]]
        grads = torch.ops.reaf_lightning.reaf_conv2d_backward(
            grad_out, x, weight, index, ctx.scalars, ctx.name, needs
        )
        grad_x, grad_w, grad_b = (g if need else None for g, need in zip(grads, needs))
        return grad_x, grad_w, grad_b, None, None


def _forward_kernel(x, weight, bias, index, scalars, impl) -> Tensor:
    with torch.autocast(x.device.type, enabled=False):
        return STRATEGIES[impl].forward(x, weight, bias, REAFPlan.from_parts(scalars, index))


def _backward_kernel(grad_out, x, weight, index, scalars, impl, needs) -> list[Tensor]:
    plan = REAFPlan.from_parts(scalars, index)
    with torch.autocast(x.device.type, enabled=False):
        grads = run_backward(impl, grad_out, x, weight, plan, tuple(needs))
    # An operator returns tensors: an empty one where no gradient was asked for.
    return [x.new_empty(0) if g is None else g for g in grads]


def _forward_fake(x, weight, bias, index, scalars, impl) -> Tensor:
    plan = REAFPlan.from_parts(scalars, index)
    return x.new_empty(x.shape[0], plan.out_channels, *plan.output_size(*x.shape[-2:]))


def _backward_fake(grad_out, x, weight, index, scalars, impl, needs) -> list[Tensor]:
    shapes = (x.shape, weight.shape, weight.shape[:1])
    return [x.new_empty(s if need else (0,)) for s, need in zip(shapes, needs)]


_LIBRARY.impl("reaf_conv2d", _forward_kernel, "CompositeExplicitAutograd")
_LIBRARY.impl("reaf_conv2d_backward", _backward_kernel, "CompositeExplicitAutograd")
torch.library.register_fake("reaf_lightning::reaf_conv2d", _forward_fake, lib=_LIBRARY)
torch.library.register_fake("reaf_lightning::reaf_conv2d_backward", _backward_fake, lib=_LIBRARY)


def _forward_flops(weight_shape, out_shape) -> int:
    """2 FLOPs per multiply-accumulate of the compact weight (Eq. 6), whatever the strategy."""
    c_out, merged, k, k2 = weight_shape
    n, _, h, w = out_shape
    return 2 * n * c_out * h * w * merged * k * k2


def _reaf_conv2d_flops(x, weight, bias, index, scalars, impl, out_shape=None, **kwargs) -> int:
    return _forward_flops(weight, out_shape)


def _reaf_conv2d_backward_flops(
    grad_out, x, weight, index, scalars, impl, needs, out_shape=None, **kwargs
) -> int:
    """As ``FlopCounterMode`` counts ``nn.Conv2d``: one forward's FLOPs per input or weight
    gradient (the bias gradient, a sum, is not counted)."""
    return _forward_flops(weight, grad_out) * (int(needs[0]) + int(needs[1]))


_FLOP_FORMULAS_REGISTERED = False


def register_flop_formulas() -> None:
    """Give ``FlopCounterMode`` the two operators' formulas (idempotent).

    Called by every ``REAFConv2d`` constructor rather than at import, because
    ``torch.utils.flop_counter`` imports Triton (about a second), and a
    ``FlopCounterMode`` copies the registry when it is created, which is always after
    the network it counts has been built.
    """
    global _FLOP_FORMULAS_REGISTERED
    if _FLOP_FORMULAS_REGISTERED:
        return
    from torch.utils.flop_counter import register_flop_formula

    register_flop_formula(torch.ops.reaf_lightning.reaf_conv2d)(_reaf_conv2d_flops)
    register_flop_formula(torch.ops.reaf_lightning.reaf_conv2d_backward)(
        _reaf_conv2d_backward_flops
    )
    _FLOP_FORMULAS_REGISTERED = True
