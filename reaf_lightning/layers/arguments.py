"""``nn.Conv2d``'s argument forms, as far as a REAF convolution can take them.

An int or a square ``(n, n)`` pair for kernel size, stride, padding and dilation, and
``padding="same"``/``"valid"`` with ``nn.Conv2d``'s meaning. Every refusal is one
line naming the argument, its value and what is valid.
"""

from __future__ import annotations

from reaf_lightning.layers.spec import REAFSpec, is_int

__all__ = ["check_ints", "resolve_padding", "square"]


def square(spec: REAFSpec, name: str, value: object) -> object:
    """``n`` from ``n`` or ``(n, n)``; a non-square pair is refused, saying why."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        if value[0] != value[1]:
            raise ValueError(
                f"REAF {spec}: {name}={tuple(value)} is not square; REAFConv2d takes an int or "
                f"an (n, n) pair (its strategies and cost counts assume a square {name})"
            )
        return value[0]
    return value


def resolve_padding(
    spec: REAFSpec, padding: object, kernel_size: int, stride: int, dilation: int
) -> tuple[int, int, str]:
    """(padding on both sides, extra padding at the end, its text in the repr).

    ``"same"`` and ``"valid"`` follow ``nn.Conv2d``: "same" needs stride 1 and pads
    ``d * (k - 1)`` in total, the odd one at the end (bottom and right).
    """
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, "valid"
        if padding != "same":
            raise ValueError(
                f"REAF {spec}: padding={padding!r} is not one of 'same', 'valid', an int or (p, p)"
            )
        if stride != 1:
            raise ValueError(
                f"REAF {spec}: padding='same' is not supported for strided convolutions "
                f"(stride={stride}), as in nn.Conv2d"
            )
        span = dilation * (kernel_size - 1)
        return span // 2, span % 2, "same"
    if padding is None:  # ours: "same" for stride 1 and odd k, symmetric
        padding = dilation * (kernel_size - 1) // 2
    padding = square(spec, "padding", padding)
    check_ints(spec, positive={}, non_negative={"padding": padding})
    return padding, 0, "0" if padding == 0 else f"({padding}, {padding})"


def check_ints(spec: REAFSpec, positive: dict, non_negative: dict) -> None:
    """One line per bad constructor argument, naming it and what is valid (ints, as square)."""
    for name, value in {**positive, **non_negative}.items():
        if not is_int(value):
            raise TypeError(
                f"REAF {spec}: {name} must be an int or a square (n, n) pair, got {value!r}"
            )
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"REAF {spec}: {name} must be a positive integer, got {value}")
    for name, value in non_negative.items():
        if value < 0:
            raise ValueError(f"REAF {spec}: {name} must be >= 0, got {value}")
