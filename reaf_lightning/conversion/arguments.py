"""What :func:`~reaf_lightning.convert` is given: each setting checked where it enters, once.

``convert`` is called from Python and, through ``create_model(..., convert={...})``,
with settings read from a config file, so every value is untrusted: each is
refused in one line that names it, its value and what is valid, before any work.
Glob patterns are a string (one pattern) or a list of strings: a string is never
read one character at a time. An ``input_size`` the network cannot take is named
as such, with the error of the layer that refused it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

from torch import nn

from reaf_lightning.errors import one_line
from reaf_lightning.layers import check_impl
from reaf_lightning.layers.spec import is_int
from reaf_lightning.models.complexity import count_macs

__all__ = [
    "check_choices",
    "check_flag",
    "check_input_size",
    "check_model",
    "check_patterns",
    "check_tolerance",
    "count_runnable",
]

MATCHES = ("flops", "params", None)


def check_model(model: object) -> nn.Module:
    """``model`` itself, if it is an ``nn.Module`` holding parameters to convert."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"convert: model must be a torch.nn.Module (a CNN), got {type(model).__name__}"
        )
    if next(model.parameters(), None) is None:
        raise ValueError(
            f"convert: {type(model).__name__} has no parameters, so no convolution to convert"
        )
    return model


def check_patterns(name: str, value: object) -> tuple[str, ...]:
    """``include``/``exclude`` as a tuple of glob patterns; a string is one pattern."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(p, str) for p in value):
        return tuple(value)
    raise TypeError(
        f"convert: {name}={value!r} must be a glob pattern of module names or a list of them "
        "(e.g. 'layer3.*' or ['layer3.*', 'layer4.*'])"
    )


def check_input_size(value: object) -> tuple[int, int, int]:
    """``(channels, height, width)``: three positive ints (a list from a config is fine)."""
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 3
        and all(is_int(v) and v > 0 for v in value)
    ):
        return tuple(value)
    raise ValueError(
        f"convert: input_size={value!r} must be three positive integers "
        "(channels, height, width) of one input image, e.g. (3, 224, 224)"
    )


def check_tolerance(value: object) -> float:
    """A finite relative cost difference ``>= 0``."""
    if isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value):
        if value >= 0:
            return float(value)
    raise ValueError(
        f"convert: tolerance={value!r} must be a finite number >= 0 (the relative cost "
        "difference accepted from one width factor, e.g. 0.04)"
    )


def check_flag(name: str, value: object) -> bool:
    """``pointwise``/``grouped``: a bool, not any truthy value (``"false"`` is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"convert: {name}={value!r} must be True or False")
    return value


def check_choices(match: object, impl: object) -> None:
    """``match`` and ``impl`` are one of their names."""
    if match not in MATCHES:
        raise ValueError(f"convert: match={match!r} must be 'flops', 'params' or None")
    check_impl(impl)


# Ours: a network whose forward reads tensor values cannot run on the meta device and is run
# once for real instead; beyond this many input elements that could exhaust memory.
_REAL_RUN_LIMIT = 1 << 26


def count_runnable(
    model: nn.Module, meta: nn.Module, input_size: tuple[int, int, int]
) -> tuple[int, bool]:
    """MACs of one image of ``input_size`` through ``model``, and whether its ``meta`` copy ran.

    Raises:
        ValueError: the network cannot run one image of ``input_size`` (its channels do
            not match the first layer, it is smaller than a kernel, ...).
    """
    try:
        return count_macs(meta, input_size), True
    except Exception as err:  # any failure of a forward we did not write
        failure = err
    if math.prod(input_size) <= _REAL_RUN_LIMIT:
        try:  # a forward that reads values (x.item(), x.tolist()) runs only for real
            return count_macs(model, input_size), False
        except Exception as err:
            failure = err
    raise ValueError(
        f"convert: {type(model).__name__} cannot run one image of input_size={input_size} "
        f"({type(failure).__name__}: {one_line(failure)}); give the (channels, height, width) "
        "the network takes"
    ) from None
