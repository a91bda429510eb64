"""``convert``: REAF in the eligible convolutions of any CNN, at the original's cost if asked.

Which convolutions are eligible is ``eligible``'s rule; what stays shared, ``sharing``'s.

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
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from reaf_lightning.conversion.arguments import (
    check_choices,
    check_flag,
    check_input_size,
    check_model,
    check_patterns,
    check_tolerance,
    count_runnable,
)
from reaf_lightning.conversion.eligible import eligible, indivisible
from reaf_lightning.conversion.graph import ChannelGraph, read_attributes, trace_channels
from reaf_lightning.conversion.rewrite import (
    apply_layout,
    gcd_all,
    meta_copy,
    module_names,
)
from reaf_lightning.conversion.sharing import keep_widths, shared_parameters, tied_modules
from reaf_lightning.errors import one_line
from reaf_lightning.layers import REAFSpec, parse_reaf
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
    include: str | Sequence[str] = ("*",),
    exclude: str | Sequence[str] = (),
    pointwise: bool = False,
    grouped: bool = False,
    input_size: Sequence[int] = (3, 224, 224),
    impl: str = "auto",
    tolerance: float = 0.04,
) -> Conversion:
    """Return a copy of ``model`` with REAF in its eligible convolutions, and a report.

    A module registered under several names (``self.b = self.a``) is converted once and
    stays one module under every name; a convolution sharing a parameter with another
    module is skipped, and keeps its widths (converting it would untie them).

    Args:
        model: any CNN (torchvision, timm, your own); it is not modified.
        reaf: the ``G_I-G_M-G_O`` setting, e.g. ``"4-3-4"``.
        match: ``"flops"`` or ``"params"``: widen the network until its cost is closest to
            the original's; ``None``: keep every width and convert only the convolutions
            whose channels already divide (no tracing needed; keeps their kept weights).
        include: glob pattern(s) of module names (``"layer3.*"``) that may be converted.
        exclude: glob pattern(s) of module names never converted (wins over ``include``).
        pointwise: also convert 1x1 convolutions.
        grouped: also convert grouped (not depthwise) convolutions, replacing the grouping.
        input_size: ``(C, H, W)`` of one image, for tracing and counting cost.
        impl: execution strategy of the new REAF convs (``"auto"`` or a name of
            ``reaf_lightning.layers.STRATEGIES``).
        tolerance: with ``match``, the relative cost difference (finite, ``>= 0``) accepted
            from one ``C`` for all classes; beyond it, each class is rounded on its own.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or a setting has the wrong type.
        ValueError: a bad setting, an ``input_size`` the network cannot take, or (with
            ``match``) a network ``torch.fx`` cannot trace; one line naming the value.
    """
    model = check_model(model)
    spec = parse_reaf(reaf)
    check_choices(match, impl)
    include, exclude = check_patterns("include", include), check_patterns("exclude", exclude)
    pointwise, grouped = check_flag("pointwise", pointwise), check_flag("grouped", grouped)
    input_size, tolerance = check_input_size(input_size), check_tolerance(tolerance)
    report = ConversionReport(str(spec), match, input_size)
    meta = meta_copy(model)
    original_macs, on_meta = count_runnable(model, meta, input_size)
    names = module_names(model)
    shared = shared_parameters(model)
    candidates = eligible(model, names, include, exclude, pointwise, grouped, report.skipped)
    if match is None:
        _leave_alone(tied_modules(shared, read_attributes(meta)), candidates, report)
        layout = {}
        for name, conv in candidates.items():
            reason = indivisible(conv.in_channels, conv.out_channels, spec)
            if reason:
                report.skipped[name] = reason
            else:
                layout[name] = (conv.in_channels, conv.out_channels)
        reaf_names = list(layout)
    else:
        graph = trace_channels(meta, input_size)
        tied = tied_modules(shared, graph.attributes)
        keep_widths(graph, tied)
        _leave_alone(tied, candidates, report)
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
    for entries in (report.converted, report.skipped):  # every name of a shared module
        for name in entries:
            also = names.get(id(model.get_submodule(name)), [name])[1:]
            if also:
                entries[name] += f"; the same module as {', '.join(also)}"
    report.skipped = dict(sorted(report.skipped.items()))
    try:
        macs = count_macs(meta_copy(converted) if on_meta else converted, input_size)
    except Exception as err:  # a forward we did not write, on layers we replaced
        replaced = ", ".join(list(layout)[:5]) + (", ..." if len(layout) > 5 else "")
        raise ValueError(
            f"convert: the converted {type(model).__name__} does not run "
            f"({type(err).__name__}: {one_line(err)}); its forward depends on the shape of a "
            f"layer convert replaced ({replaced}): exclude it (exclude=[...])"
        ) from None
    report.macs = (original_macs, macs)
    report.params = (count_parameters(model), count_parameters(converted))
    return Conversion(converted, report)


def _leave_alone(
    tied: dict[str, str], candidates: dict[str, nn.Conv2d], report: ConversionReport
) -> None:
    for name, reason in tied.items():
        if candidates.pop(name, None) is not None:
            report.skipped[name] = reason


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
