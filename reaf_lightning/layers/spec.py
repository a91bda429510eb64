"""The REAF setting ``G_I-G_M-G_O`` (paper §III-B): which combinations of input groups exist.

``G_I`` input-channel groups, ``G_M`` of them merged per output group, and one
output group per ``G_M``-combination, ``G_O = C(G_I, G_M)``. Nothing here knows
about tensors; :mod:`reaf_lightning.layers.plan` turns a spec into index tensors.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

__all__ = ["REAFSpec", "parse_reaf"]


class REAFSpec(tuple):
    """A validated ``(G_I, G_M, G_O)`` triple, printed in the paper's notation ``"4-3-4"``."""

    def __new__(cls, g_i: int, g_m: int, g_o: int | None = None) -> REAFSpec:
        for name, value in (("G_I", g_i), ("G_M", g_m)):
            if not is_int(value) or value < 1:
                raise ValueError(f"REAF {name} must be a positive integer, got {value!r}")
        if g_m > g_i:
            raise ValueError(
                f"REAF {g_i}-{g_m}-{g_o if g_o is not None else '?'}: G_M={g_m} must not exceed "
                f"G_I={g_i} (each output group merges G_M of the G_I input groups)"
            )
        expected = math.comb(g_i, g_m)
        g_o = expected if g_o is None else g_o
        if not is_int(g_o) or g_o != expected:
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


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
