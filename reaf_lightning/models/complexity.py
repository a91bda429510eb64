"""Parameter and multiply-accumulate counts (the paper's "#params" and "GFLOPs" columns).

MACs are counted for convolutions and linear layers only, at their *useful*
(compact) size: a REAF conv counts ``C_out * G_M * A_in * k * k`` MACs per output
position (paper Eq. 6) whatever strategy executes it, because that is the model's
cost, not an artefact of an execution strategy. BatchNorm, activations, pooling
and additions are not counted. The paper does not define its GFLOPs; its
ImageNet numbers are these MACs (one multiply-accumulate = one "FLOP") of
the network in the layout each row uses (``stride_on``, see
``docs/paper_inconsistencies.md``), e.g. ResNet50 3.858 G with the stride on
the first 1x1 conv against the paper's 3.86.

Counting runs one forward pass of a single image with forward hooks;
:func:`network_cost` builds the network under ``torch.device("meta")`` first,
which makes this free of real compute. It is the one place that does. It builds
with the builder it is given: the registry's :func:`create_model` by default, and
:func:`reaf_lightning.conversion.sources.build_network` for a run's network, which
may be any network a config can name (this module never imports the conversion).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reaf_lightning.layers import REAFConv2d, REAFPlusConv2d
from reaf_lightning.models.registry import create_model

__all__ = [
    "NetworkCost",
    "count_macs",
    "count_parameters",
    "layer_macs",
    "network_complexity",
    "network_cost",
]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def layer_macs(module: nn.Module, output: Tensor) -> int:
    """MACs one call of ``module`` spent to produce ``output`` (0 for uncounted layer types)."""
    if isinstance(module, REAFConv2d):
        per_output = module.merged_channels * module.kernel_size**2
    elif isinstance(module, REAFPlusConv2d):
        per_output = module.in_channels * module.kernel_size**2
    elif isinstance(module, nn.Conv2d):
        per_output = (
            (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        )
    elif isinstance(module, nn.Linear):
        per_output = module.in_features
    else:
        return 0
    return per_output * output.numel()


def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass of one image of shape ``input_size``.

    The model runs in eval mode on a zero input on its own device (``meta`` works),
    and its training mode is restored afterwards.
    """
    total = 0

    def hook(module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        nonlocal total
        total += layer_macs(module, output)

    counted = (nn.Conv2d, nn.Linear, REAFConv2d, REAFPlusConv2d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    # BatchNorm keeps shapes and is not counted, but is most of a meta-device pass's time:
    # skip it while counting (an instance attribute shadows the method; deleted below).
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.forward = nn.Identity.forward.__get__(norm)
    was_training = model.training
    try:
        parameter = next(model.parameters())
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
        for norm in norms:
            del norm.forward
    return total


@dataclass(frozen=True)
class NetworkCost:
    """What a network built by name costs for one image, and the architecture it resolved to.

    Attributes:
        params: parameter elements.
        macs: multiply-accumulates of one forward pass of one image.
        input_size: the image's ``(channels, height, width)``.
        architecture: the built network's resolved settings (``width``, ``out_width``,
            ``groups``, ``reaf``, ``reaf_convs``, ``reaf_plus_groups``, ``stride_on``) where
            it has them, so a caller can report what a name and its defaults became.
    """

    params: int
    macs: int
    input_size: tuple[int, ...]
    architecture: dict[str, Any]


_ARCHITECTURE = (
    "width",
    "out_width",
    "groups",
    "reaf",
    "reaf_convs",
    "reaf_plus_groups",
    "stride_on",
)


def network_cost(
    arch: str,
    arch_kwargs: dict[str, Any] | None,
    input_size: tuple[int, ...],
    build: Callable[..., nn.Module] = create_model,
) -> NetworkCost:
    """Build network ``arch`` on the ``meta`` device and count it: the one place.

    The ``meta`` device holds shapes only: no compute, no memory, and a trained
    network (and its BatchNorm statistics) stays untouched. ``reaf-zoo``, the
    width solver, the run's complexity record and ``reaf-report`` all count here.

    Args:
        arch: a name ``build`` knows: for the default, a registry name
            (:func:`~reaf_lightning.models.list_models`).
        arch_kwargs: its arguments (``num_classes``, ``stem``, ...).
        input_size: one image's ``(channels, height, width)``.
        build: ``build(arch, **arch_kwargs)`` makes the network.
    """
    with torch.device("meta"):
        net = build(arch, **(arch_kwargs or {}))
    architecture = {name: getattr(net, name) for name in _ARCHITECTURE if hasattr(net, name)}
    size = tuple(input_size)
    return NetworkCost(count_parameters(net), count_macs(net, size), size, architecture)


def network_complexity(
    arch: str,
    arch_kwargs: dict[str, Any] | None,
    num_classes: int,
    input_size: tuple[int, ...],
    build: Callable[..., nn.Module],
) -> dict[str, Any]:
    """#params and multiply-accumulates of a run's network, as a run records them.

    ``build`` is :func:`reaf_lightning.conversion.sources.build_network` for a run: a
    run's ``arch`` is any name a config can give.
    """
    kwargs = {**(arch_kwargs or {}), "num_classes": num_classes}
    cost = network_cost(arch, kwargs, input_size, build)
    return {
        "complexity/params": cost.params,
        "complexity/params_M": cost.params / 1e6,
        "complexity/macs": cost.macs,
        "complexity/gmacs": cost.macs / 1e9,
        "complexity/input_size": list(cost.input_size),
    }
