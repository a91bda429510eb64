"""``convert``: REAF in the eligible convolutions of any CNN, at the original's cost if asked.

Eligible (ours; the paper applies REAF to ResNet's 3x3 convolutions, Table 1):
an ``nn.Conv2d`` (exactly that class: a subclass may compute something else)
with a square kernel larger than 1x1, square stride and dilation, one
symmetric zero padding, ``groups == 1``, selected by ``include``/``exclude``,
whose input channels divide by ``G_I`` and output channels by ``G_O``.
``pointwise=True`` adds 1x1 convolutions; ``grouped=True`` adds grouped
(not depthwise) convolutions, whose grouping REAF then replaces (a group
convolution is REAF with ``G_M = 1``, paper §III-D). Depthwise convolutions
never are: each output channel already reads one input channel.

With ``match="flops"`` (multiply-accumulates, the paper's FLOPs; see
``reaf_lightning.models.complexity``) or ``"params"``, every channel class next
to a converted convolution that is not fixed (see ``graph``) is scaled by one
factor ``C / C0``, where ``C0`` is the greatest common divisor of those
classes' widths: for ResNet50, ``C0 = 64`` and ``C`` is the paper's base width
(stage widths ``C, 2C, 4C, 8C``). ``C`` runs over the multiples that keep every
class divisible as REAF (and any grouped conv) requires, and the ``C`` whose
cost is closest to the original's wins. Cost is quadratic in ``C`` (each
layer's cost is a product of two widths, each fixed or proportional to ``C``),
so, as the zoo's width solver does for ``(C, C')``, three exact counts fit it,
the fit is scanned, and the winner is counted again exactly.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from reaf_lightning.conversion.graph import ChannelGraph, trace_channels
from reaf_lightning.conversion.rewrite import (
    apply_layout,
    conv_padding,
    gcd_all,
    meta_copy,
    square,
)
from reaf_lightning.layers import REAF_IMPLS, REAFConv2d, REAFSpec, parse_reaf
from reaf_lightning.models.complexity import count_macs, count_parameters

__all__ = ["Conversion", "ConversionReport", "convert"]

Match = Literal["flops", "params"]


@dataclass
class ConversionReport:
    """What :func:`convert` did: the layers converted, those skipped and why, cost before/after.

    ``macs``/``params`` are ``(original, converted)`` counts for one image of ``input_size``
    (counted by ``reaf_lightning.models.complexity``). ``width``/``reference_width`` are ``C``
    and ``C0`` when the network was widened (``None`` with ``match=None``). ``kept_widths``
    names converted layers with an input or output that could not widen, and what fixed it.
    """

    reaf: str
    match: str | None
    input_size: tuple[int, int, int]
    converted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    kept_widths: dict[str, str] = field(default_factory=dict)
    width: int | None = None
    reference_width: int | None = None
    scale: float = 1.0
    macs: tuple[int, int] = (0, 0)
    params: tuple[int, int] = (0, 0)

    @property
    def macs_ratio(self) -> float:
        return self.macs[1] / self.macs[0]

    @property
    def params_ratio(self) -> float:
        return self.params[1] / self.params[0]

    def __str__(self) -> str:
        lines = [
            f"REAF {self.reaf}, match={self.match}, input {self.input_size}: "
            f"{len(self.converted)} conv(s) converted, {len(self.skipped)} skipped",
        ]
        if self.width is not None:
            lines.append(f"widths x {self.width}/{self.reference_width} (C = {self.width})")
        elif self.scale != 1.0:
            lines.append(f"widths x {self.scale:.3f}, each rounded to what REAF needs")
        lines.append(
            f"MACs {self.macs[0]:,} -> {self.macs[1]:,} (x{self.macs_ratio:.4f}); "
            f"params {self.params[0]:,} -> {self.params[1]:,} (x{self.params_ratio:.4f})"
        )
        lines += [f"  converted {name}: {what}" for name, what in self.converted.items()]
        lines += [f"  skipped   {name}: {why}" for name, why in self.skipped.items()]
        lines += [f"  not widened {name}: {why}" for name, why in self.kept_widths.items()]
        return "\n".join(lines)


class Conversion(NamedTuple):
    """The converted network and its :class:`ConversionReport`."""

    model: nn.Module
    report: ConversionReport


def convert(
    model: nn.Module,
    reaf: str | Sequence[int] = "4-3-4",
    match: Match | None = "flops",
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    pointwise: bool = False,
    grouped: bool = False,
    input_size: tuple[int, int, int] = (3, 224, 224),
    impl: str = "auto",
    tolerance: float = 0.04,
) -> Conversion:
    """Return a copy of ``model`` with REAF in its eligible convolutions, and a report.

    Args:
        model: any CNN (torchvision, timm, your own); it is not modified.
        reaf: the ``G_I-G_M-G_O`` setting, e.g. ``"4-3-4"``.
        match: ``"flops"`` or ``"params"``: widen the network until its cost is closest to
            the original's; ``None``: keep every width and convert only the convolutions
            whose channels already divide (no tracing needed; keeps their kept weights).
        include: glob patterns of module names (``"layer3.*"``) that may be converted.
        exclude: glob patterns of module names never converted (wins over ``include``).
        pointwise: also convert 1x1 convolutions.
        grouped: also convert grouped (not depthwise) convolutions, replacing the grouping.
        input_size: ``(C, H, W)`` of one image, for tracing and counting cost.
        impl: execution strategy of the new REAF convs (``reaf_lightning.layers.REAF_IMPLS``).
        tolerance: with ``match``, the relative cost difference accepted from one ``C``
            for all classes; beyond it, each class is rounded on its own (finer steps).

    Raises:
        ValueError: a bad setting, or (with ``match``) a network ``torch.fx`` cannot trace.
    """
    spec = parse_reaf(reaf)
    if match not in ("flops", "params", None):
        raise ValueError(f"match={match!r} must be 'flops', 'params' or None")
    if impl not in REAF_IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {', '.join(REAF_IMPLS)}")
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) != 3:
        raise ValueError(f"input_size={input_size} must be (channels, height, width)")
    report = ConversionReport(str(spec), match, input_size)
    candidates = _eligible(model, spec, include, exclude, pointwise, grouped, report)
    meta = meta_copy(model)
    if match is None:
        layout = {}
        for name, conv in candidates.items():
            reason = _indivisible(conv.in_channels, conv.out_channels, spec)
            if reason:
                report.skipped[name] = reason
            else:
                layout[name] = (conv.in_channels, conv.out_channels)
        reaf_names = list(layout)
    else:
        graph = trace_channels(meta, input_size)
        layout, reaf_names = _widen(
            graph, candidates, spec, match, meta, input_size, impl, tolerance, report
        )
    converted = apply_layout(copy.deepcopy(model), layout, set(reaf_names), spec, impl)
    for name in reaf_names:
        conv, new = candidates[name], converted.get_submodule(name)
        report.converted[name] = (
            f"{conv.in_channels}->{conv.out_channels} as REAF {new.in_channels}->"
            f"{new.out_channels}, k={new.kernel_size}"
        )
    report.skipped = dict(sorted(report.skipped.items()))
    try:  # free on the meta device, unless the forward reads values (then once for real)
        report.macs = (count_macs(meta, input_size), count_macs(meta_copy(converted), input_size))
    except RuntimeError:
        report.macs = (count_macs(model, input_size), count_macs(converted, input_size))
    report.params = (count_parameters(model), count_parameters(converted))
    return Conversion(converted, report)


def _eligible(
    model: nn.Module,
    spec: REAFSpec,
    include: Sequence[str],
    exclude: Sequence[str],
    pointwise: bool,
    grouped: bool,
    report: ConversionReport,
) -> dict[str, nn.Conv2d]:
    """The convolutions that may become REAF, before divisibility; the rest go to the report."""
    eligible = {}
    for name, module in model.named_modules():
        if isinstance(module, REAFConv2d):
            report.skipped[name] = "already a REAF convolution"
            continue
        if not isinstance(module, nn.Conv2d):
            continue
        reason = _shape_reason(module, pointwise, grouped)
        if type(module) is not nn.Conv2d:
            reason = f"{type(module).__name__} is a subclass of nn.Conv2d (may compute otherwise)"
        elif not any(fnmatch.fnmatchcase(name, p) for p in include):
            reason = f"not matched by include={list(include)}"
        elif any(fnmatch.fnmatchcase(name, p) for p in exclude):
            reason = f"matched by exclude={list(exclude)}"
        if reason:
            report.skipped[name] = reason
        else:
            eligible[name] = module
    return eligible


def _shape_reason(conv: nn.Conv2d, pointwise: bool, grouped: bool) -> str | None:
    k = square(conv.kernel_size)
    if k is None:
        return f"kernel {conv.kernel_size} is not square"
    if k == 1 and not pointwise:
        return "1x1 convolution (pointwise=True converts it)"
    if square(conv.stride) is None or square(conv.dilation) is None:
        return f"stride {conv.stride} / dilation {conv.dilation} not square"
    if conv.padding_mode != "zeros" or conv_padding(conv) is None:
        return f"padding {conv.padding!r} ({conv.padding_mode}) is not one symmetric zero padding"
    if conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels:
        return "depthwise convolution (each output channel reads one input channel)"
    if conv.groups > 1 and not grouped:
        return f"grouped convolution, groups={conv.groups} (grouped=True replaces the grouping)"
    return None


def _indivisible(in_channels: int, out_channels: int, spec: REAFSpec) -> str | None:
    if in_channels % spec.g_i:
        return f"in_channels={in_channels} is not divisible by G_I={spec.g_i}"
    if out_channels % spec.g_o:
        return f"out_channels={out_channels} is not divisible by G_O={spec.g_o}"
    return None


def _widen(
    graph: ChannelGraph,
    candidates: dict[str, nn.Conv2d],
    spec: REAFSpec,
    match: Match,
    meta: nn.Module,
    input_size: tuple[int, int, int],
    impl: str,
    tolerance: float,
    report: ConversionReport,
) -> tuple[dict[str, tuple[int | None, int | None]], list[str]]:
    """Choose the REAF convs and ``C``: every resized module's new widths, the REAF convs."""
    active = {}
    for name in candidates:
        if name in graph.uses:
            active[name] = graph.uses[name]
        else:
            report.skipped[name] = "not called by the traced forward"
    while True:  # drop convs a fixed width keeps from dividing; repeat until stable
        required: dict[int, set[int]] = {}
        for name, use in graph.uses.items():  # grouped convs that stay grouped keep dividing
            groups = getattr(use.module, "groups", 1)
            depthwise = groups == getattr(use.module, "in_channels", 0)
            if groups > 1 and not depthwise and name not in active:
                for part in use.inputs.parts + use.output.parts:
                    required.setdefault(graph.root(part), set()).add(groups)
        for use in active.values():
            for value, divisor in ((use.inputs, spec.g_i), (use.output, spec.g_o)):
                for part in value.parts:
                    required.setdefault(graph.root(part), set()).add(divisor)
        dropped = False
        for name, use in list(active.items()):
            for value, divisor, what in (
                (use.inputs, spec.g_i, "in_channels"),
                (use.output, spec.g_o, "out_channels"),
            ):
                for part in value.parts:
                    fixed = graph.fixed_reason(part)
                    if fixed and graph.widths[part] % divisor:
                        report.skipped[name] = (
                            f"{what}={graph.widths[part]} is not divisible by {divisor} and "
                            f"keeps its width: it is tied to {fixed}"
                        )
                        active.pop(name, None)
                        dropped = True
        if not dropped:
            break
    for name, use in active.items():  # converted, but a side that keeps its width says why
        notes = []
        for value, what in ((use.inputs, "input"), (use.output, "output")):
            reasons = sorted({graph.fixed_reason(p) for p in value.parts} - {None})
            if reasons:
                notes.append(f"its {what} is tied to {'; '.join(reasons)}")
        if notes:
            report.kept_widths[name] = ", ".join(notes)
    roots = sorted(
        {
            graph.root(p)
            for use in active.values()
            for p in use.inputs.parts + use.output.parts
            if not graph.fixed_reason(p)
        }
    )

    def layout_at(widths: dict[int, int]) -> dict[str, tuple[int | None, int | None]]:
        layout = {}
        for name, use in graph.uses.items():
            in_width = graph.width(use.inputs, widths)
            out_width = graph.width(use.output, widths) if use.output else None
            if isinstance(use.module, nn.BatchNorm2d):
                out_width = in_width
            layout[name] = (in_width, out_width)
        return {
            n: w for n, w in layout.items() if n in active or w != _current(graph.uses[n].module)
        }

    if not roots:
        return layout_at({}), list(active)
    reference = gcd_all([graph.widths[r] for r in roots])
    divisors = {r: math.lcm(*required.get(r, {1})) for r in roots}
    step = 1
    for r in roots:
        step = math.lcm(step, divisors[r] // math.gcd(divisors[r], graph.widths[r] // reference))

    def proportional(width: int) -> dict[int, int]:
        return {r: graph.widths[r] // reference * width for r in roots}

    def cost(widths: dict[int, int]) -> int:
        model = meta_copy(meta)
        with torch.device("meta"):
            apply_layout(model, layout_at(widths), set(active), spec, impl)
        return count_macs(model, input_size) if match == "flops" else count_parameters(model)

    target = count_macs(meta, input_size) if match == "flops" else count_parameters(meta)
    points = [step * k for k in (1, 2, 3)]
    coeffs = np.polyfit(points, [cost(proportional(w)) for w in points], 2)
    grid = np.arange(step, 4 * reference + 1, step)
    best = int(grid[np.argmin(np.abs(np.polyval(coeffs, grid) / target - 1.0))])
    exact = cost(proportional(best))
    if abs(exact - np.polyval(coeffs, best)) > 0.5 + 1e-9 * exact:
        raise RuntimeError(
            f"convert: the quadratic cost fit predicted {np.polyval(coeffs, best):.0f} at "
            f"C={best} but the exact count is {exact}"
        )
    widths = proportional(best)
    report.width, report.reference_width = best, reference
    if abs(exact / target - 1.0) > tolerance:
        # C's step is too coarse here: round each class to its own divisor instead, over a
        # fine grid of scales around the continuous solution of the fit (ours).
        roots_of_fit = [x.real for x in np.roots(coeffs - [0, 0, target]) if x.real > 0]
        centre = min(roots_of_fit, key=lambda x: abs(x - best)) / reference
        scored = []
        for scale in centre * (1.0 + 0.004 * np.arange(-12, 13)):
            rounded = {
                r: max(divisors[r], round(graph.widths[r] * scale / divisors[r]) * divisors[r])
                for r in roots
            }
            scored.append((abs(cost(rounded) / target - 1.0), float(scale), rounded))
        error, scale, rounded = min(scored, key=lambda item: item[0])
        if error < abs(exact / target - 1.0):
            widths = rounded
            report.width, report.reference_width, report.scale = None, None, scale
    if report.width is not None:
        report.scale = report.width / report.reference_width
    return layout_at(widths), list(active)


def _current(module: nn.Module) -> tuple[int, int | None]:
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features, module.num_features
    return module.in_features, module.out_features
