"""Width solver: the C (and C') that makes a REAF model cost what its baseline costs.

The paper gives a width ``C`` and an output width ``C'`` for every
``G_I-G_M-G_O`` of Table 3, each REAF-ResNet50 at about the baseline's
~1.2 GFLOPs ("we keep the topology and computational complexity of the model",
§III-C), without saying how it chose them. This module makes that choice
(ours) under the divisibility rules of the REAF conv (``C % G_I == 0`` for its
input, ``C' % G_O == 0`` for its output; with ``C' = C`` both at once); it
finds the paper's widths where tested.

Every count in a ResNet is *bilinear* in ``(C, C')``: each conv's cost is a
product of its input and output widths, and one of the two is ``C`` or ``C'``
(or a constant), never ``C^2``. So four exact counts at distinct widths
determine ``a + b C + c C' + d C C'`` everywhere; the solver fits that, scans the
grid analytically, and re-counts the winner exactly to verify the fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from reaf_lightning.layers import parse_reaf
from reaf_lightning.models.complexity import network_cost

__all__ = ["WidthSolution", "model_cost", "solve_width"]

Metric = Literal["macs", "params"]


@dataclass(frozen=True)
class WidthSolution:
    """The chosen widths and how close their cost is to the target."""

    width: int
    out_width: int
    cost: int
    target: int
    metric: str

    @property
    def relative_difference(self) -> float:
        return self.cost / self.target - 1.0


def model_cost(name: str, metric: Metric, input_size: tuple[int, int, int], **kwargs: Any) -> int:
    """Exact MACs or parameters of a registry model, built on the meta device (no compute)."""
    cost = network_cost(name, kwargs, input_size)
    return cost.macs if metric == "macs" else cost.params


def solve_width(
    model: str,
    reaf: str | tuple[int, ...],
    baseline: str,
    metric: Metric = "macs",
    free_out_width: bool = False,
    stem: Literal["cifar", "imagenet"] = "cifar",
    num_classes: int = 100,
    baseline_kwargs: dict[str, Any] | None = None,
    max_width: int = 512,
    tolerance: float = 0.01,
    **model_kwargs: Any,
) -> WidthSolution:
    """Find the REAF widths whose cost is closest to the baseline's.

    Args:
        model: REAF registry name, e.g. ``"reaf_resnet50"``.
        reaf: the ``G_I-G_M-G_O`` setting.
        baseline: registry name of the model to match, e.g. ``"resnet50"``.
        metric: ``"macs"`` (the paper's criterion) or ``"params"``.
        free_out_width: also choose ``C'`` independently of ``C`` (needed when
            ``lcm(G_I, G_O)`` is large, e.g. 8-4-70). Among solutions within
            ``tolerance`` of the target, the one with ``C'`` closest to ``C`` wins
            (the paper keeps the two close), then the closest cost.
        stem: input stem; sets the input size (32 or 224).
        num_classes: classifier size (matters for parameter matching).
        baseline_kwargs: extra arguments of the baseline (e.g. ``width`` for WideResNet).
        max_width: largest ``C`` and ``C'`` considered.
        tolerance: relative cost difference regarded as a match when ``free_out_width``.
        **model_kwargs: further fixed arguments of the REAF model (e.g. ``reaf_convs``).

    Raises:
        ValueError: if no width up to ``max_width`` satisfies the divisibility rules.
    """
    if metric not in ("macs", "params"):
        raise ValueError(f"metric={metric!r} must be 'macs' or 'params'")
    spec = parse_reaf(reaf)
    size = (3, 32, 32) if stem == "cifar" else (3, 224, 224)
    common = {"stem": stem, "num_classes": num_classes}
    target = model_cost(baseline, metric, size, **common, **(baseline_kwargs or {}))

    if free_out_width:
        widths = np.arange(spec.g_i, max_width + 1, spec.g_i)
        out_widths = np.arange(spec.g_o, max_width + 1, spec.g_o)
    else:
        step = math.lcm(spec.g_i, spec.g_o)
        widths = out_widths = np.arange(step, max_width + 1, step)
    if widths.size == 0 or out_widths.size == 0:
        raise ValueError(
            f"REAF {spec}: no width <= max_width={max_width} is divisible as required "
            f"(C by G_I={spec.g_i}, C' by G_O={spec.g_o}); raise max_width or use free_out_width"
        )

    def exact(width: int, out_width: int) -> int:
        return model_cost(
            model,
            metric,
            size,
            reaf=spec,
            width=width,
            out_width=out_width,
            **common,
            **model_kwargs,
        )

    # Fit cost = a + b*C + c*C' + d*C*C' from four exact counts (exactly bilinear).
    w1, w2 = spec.g_i * spec.g_o, 2 * spec.g_i * spec.g_o
    points = [(w1, w1), (w2, w1), (w1, w2), (w2, w2)]
    design = np.array([[1, w, o, w * o] for w, o in points], dtype=np.float64)
    costs = np.array([exact(w, o) for w, o in points], dtype=np.float64)
    a, b, c, d = np.linalg.solve(design, costs)

    if free_out_width:
        grid_w, grid_o = np.meshgrid(widths, out_widths, indexing="ij")
    else:
        grid_w = grid_o = widths
    predicted = a + b * grid_w + c * grid_o + d * grid_w * grid_o
    rel = np.abs(predicted / target - 1.0)
    if free_out_width and (rel <= tolerance).any():
        gap = np.where(rel <= tolerance, np.abs(grid_w - grid_o), np.inf)
        candidates = np.flatnonzero(gap == gap.min())
        best = candidates[np.argmin(rel.ravel()[candidates])]
    else:
        best = int(np.argmin(rel))
    width, out_width = int(grid_w.ravel()[best]), int(np.ravel(grid_o)[best])
    cost = exact(width, out_width)
    if abs(cost - predicted.ravel()[best]) > 0.5:
        raise RuntimeError(
            f"width solver: bilinear fit predicted {predicted.ravel()[best]:.0f} but the exact "
            f"count of {model} C={width} C'={out_width} is {cost}; the model is not bilinear"
        )
    return WidthSolution(width, out_width, cost, target, metric)
