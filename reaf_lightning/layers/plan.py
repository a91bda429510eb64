"""A REAF layer's plan: its shape and the index tensors every strategy works from.

The plan is computed once from the :class:`~reaf_lightning.layers.spec.REAFSpec`, the
channel counts and the convolution geometry, and is all a strategy
(:mod:`reaf_lightning.layers.strategies`) or the autotuner needs besides the input
and the parameters. It is a ``NamedTuple`` (immutable, and traced by ``torch.compile``
as plain Python values); its index tensors live on the layer as buffers, so that
they follow ``.to(device)``, and :meth:`REAFPlan.with_index` puts them back in.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from reaf_lightning.layers.spec import REAFSpec

__all__ = ["INDEX_FIELDS", "REAFPlan", "make_plan"]

INDEX_FIELDS = ("dense_index", "gather_index", "slot_rows", "partial_index", "partial_source")


class REAFPlan(NamedTuple):
    """Shape, geometry and index tensors of one REAF convolution.

    Index tensors (see :func:`make_plan`):

    * ``dense_index[c]``: the input channel of every compact weight column of output
      channel ``c`` (``masked`` scatters with it); ``gather_index`` lists the input
      channels of every combination, one after another (``gather``, ``loop``).
    * ``decompose``: a *slot* is an (input group ``j``, output group ``o`` reading ``j``)
      pair. A ``groups = G_I`` convolution yields the partials of input group ``j`` as
      one contiguous block, so slots are ordered by ``j``, and within it by (``m``, ``o``),
      ``m`` being ``j``'s place in ``E_o``. ``slot_rows[s] = o * G_M + m`` is the
      compact-weight block slot ``s`` uses; ``partial_index[m * C_out + o * B + b]`` is
      the partial channel holding the ``m``-th term of output channel ``o * B + b``, and
      ``partial_source`` its inverse (which output channel each partial feeds).
    * ``in_order``: the partials already lie as ``(G_M, C_out)``, so summing them needs
      no gather. True for ``G_M = 1``, ``G_M = G_I`` and ``G_M = G_I - 1`` (4-3-4,
      8-7-8, ...).
    """

    g_i: int
    g_m: int
    g_o: int
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    padding: int
    dilation: int
    in_order: bool
    dense_index: Tensor
    gather_index: Tensor
    slot_rows: Tensor
    partial_index: Tensor
    partial_source: Tensor

    @property
    def a_in(self) -> int:
        """``A_in``: channels per input group."""
        return self.in_channels // self.g_i

    @property
    def b_out(self) -> int:
        """``B_out``: channels per output group."""
        return self.out_channels // self.g_o

    @property
    def merged_channels(self) -> int:
        """``G_M * A_in``: the input channels each output channel reads."""
        return self.g_m * self.a_in

    @property
    def conv_args(self) -> tuple[int, int, int]:
        """``(stride, padding, dilation)`` as ``F.conv2d`` takes them."""
        return self.stride, self.padding, self.dilation

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial output size for an (already padded-at-the-end) ``height x width`` input."""
        span = self.dilation * (self.kernel_size - 1)
        return tuple((s + 2 * self.padding - span - 1) // self.stride + 1 for s in (height, width))

    def with_index(self, tensors: list[Tensor] | tuple[Tensor, ...]) -> REAFPlan:
        """The same plan with its index tensors replaced (in ``INDEX_FIELDS`` order)."""
        return REAFPlan(*self[: len(self) - len(INDEX_FIELDS)], *tensors)

    def scalars(self) -> list[int]:
        """Everything but the index tensors, as the ``int[]`` the library operators take."""
        return [int(v) for v in self[: len(self) - len(INDEX_FIELDS)]]

    def index(self) -> list[Tensor]:
        """The index tensors in ``INDEX_FIELDS`` order."""
        return list(self[len(self) - len(INDEX_FIELDS) :])

    @classmethod
    def from_parts(cls, scalars: list[int], index: list[Tensor]) -> REAFPlan:
        """Inverse of (:meth:`scalars`, :meth:`index`)."""
        *ints, in_order = scalars
        return cls(*ints, bool(in_order), *index)


def make_plan(
    spec: REAFSpec,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
) -> REAFPlan:
    """The plan of a REAF convolution; index tensors on the CPU (a layer moves its own)."""
    combinations = spec.combinations()
    a_in, b_out = in_channels // spec.g_i, out_channels // spec.g_o
    channels = torch.tensor(
        [[g * a_in + a for g in combo for a in range(a_in)] for combo in combinations]
    )  # (G_O, G_M * A_in): input channels of each output group
    slots = _slots(combinations)
    slot_of = {pair: s for s, pair in enumerate(slots)}
    b = torch.arange(b_out)
    in_order = slots == [(o, m) for m in range(spec.g_m) for o in range(spec.g_o)]
    return REAFPlan(
        *spec,
        in_channels,
        out_channels,
        kernel_size,
        stride,
        padding,
        dilation,
        in_order,
        dense_index=channels.repeat_interleave(b_out, dim=0),
        gather_index=channels.reshape(-1),
        slot_rows=torch.tensor([o * spec.g_m + m for o, m in slots]),
        partial_index=torch.cat(
            [slot_of[(o, m)] * b_out + b for m in range(spec.g_m) for o in range(spec.g_o)]
        ),
        partial_source=torch.cat([o * b_out + b for o, _ in slots]),
    )


def _slots(combinations: list[tuple[int, ...]]) -> list[tuple[int, int]]:
    """The (output group ``o``, place ``m``) slots in the order the grouped conv yields them.

    With combinations in lexicographic order, for ``G_M = G_I - 1`` the ``m``-th groups
    of all combinations, read for ``m = 0, 1, ...``, never decrease, so these slots come
    out in (``m``, ``o``) order: ``in_order``.
    """
    g_m, g_o = len(combinations[0]), len(combinations)
    return sorted(
        ((o, m) for o in range(g_o) for m in range(g_m)),
        key=lambda om: (combinations[om[0]][om[1]], om[1], om[0]),
    )
