"""Figures 2-4 of the paper: overlaid class-selectivity histograms, ready for print.

The paper draws, per figure, the layer where the two networks' distributions
separate most (§IV-E: layer1 for Figures 2-3, layer4 for Figure 4). We draw
one chosen layer at IEEE column width (3.5 in) or several layers side by side
at page width (7.16 in), in the package's one figure style
(:mod:`reaf_lightning.figure_style`: 8-pt text, TrueType fonts in PDFs, the
colour-blind-safe palette), shared axes. Each model's histogram is the mean over
its networks (seeds) of their densities, and with several networks the band
around it spans their lowest to highest density per bin: the spread over seeds.
Each model's mean SI (over its seeds) is a dashed line and written with its
standard deviation over seeds; a panel also shows the difference between the
models (model_b minus model_a, ``Δ d ± h``: its interval over seeds is ``d - h`` to
``d + h``), or, for one network per model, the two-sample KS result of that one pair.

A layer whose values equal an earlier layer's is not drawn twice unless it is
asked for by name: with the spatial mean, ``avgpool``'s output *is* the
spatial mean of ``layer4``'s, so its panel would repeat layer4's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from reaf_lightning.errors import ConfigError  # noqa: E402
from reaf_lightning.figure_style import (  # noqa: E402
    COLUMN_WIDTH_IN,
    PAGE_WIDTH_IN,
    figure_style,
    palette,
    save_figure,
)
from reaf_lightning.io import atomic_outputs, check_stem  # noqa: E402

__all__ = [
    "choose_panels",
    "duplicate_layers",
    "output_paths",
    "plot_selectivity",
    "save_selectivity_outputs",
]

PANEL_HEIGHT_IN = 1.9
HEADROOM = 1.6  # y range over the tallest bar, leaving the top third for the annotations
MAX_COLUMNS = 4


def duplicate_layers(frame: pd.DataFrame) -> dict[str, str]:
    """``{layer: earlier layer}`` for layers whose values equal an earlier layer's for every model.

    Float32 activations averaged in a different order differ in the last bits,
    so values are compared with a relative tolerance of 1e-5.
    """
    layers = list(frame["layer"].cat.categories)
    values = {
        (layer, model): group.sort_values("unit")["si"].to_numpy()
        for (layer, model), group in frame.groupby(["layer", "model"], observed=True)
    }
    models = list(frame["model"].cat.categories)
    duplicates: dict[str, str] = {}
    for i, layer in enumerate(layers):
        for earlier in layers[:i]:
            if earlier in duplicates:
                continue
            pairs = [(values.get((layer, m)), values.get((earlier, m))) for m in models]
            if all(
                a is not None and b is not None and a.shape == b.shape
                and np.allclose(a, b, rtol=1e-5, atol=1e-7, equal_nan=True)
                for a, b in pairs
            ):  # fmt: skip
                duplicates[layer] = earlier
                break
    return duplicates


def choose_panels(
    frame: pd.DataFrame, plot_layers: str | Sequence[str], ks: pd.DataFrame | None
) -> tuple[list[str], list[str]]:
    """The layers to draw and the notes to print about the choice.

    Args:
        frame: Long-form SI table (``layer``, ``unit``, ``model``, ``si``).
        plot_layers: ``"all"`` (every layer, duplicates once),
            ``"most_separated"`` (the layer with the largest KS statistic, averaged over
            the pairs of networks, as the paper chooses) or layer names (drawn as asked).
        ks: Per-layer KS tests (:func:`reaf_lightning.analysis.stats.ks_tests`), for two models.

    Raises:
        ConfigError: an unknown layer, or ``most_separated`` with one model.
    """
    layers = list(frame["layer"].cat.categories)
    duplicates = duplicate_layers(frame)
    notes = [
        f"{layer} has the same values as {earlier} (with the spatial mean, avgpool's output is "
        f"the spatial mean of layer4's); drawn once, as {earlier}"
        for layer, earlier in duplicates.items()
    ]
    if isinstance(plot_layers, str) and plot_layers == "all":
        return [layer for layer in layers if layer not in duplicates], notes
    if isinstance(plot_layers, str) and plot_layers == "most_separated":
        if ks is None:
            raise ConfigError("plot_layers 'most_separated' compares two models; give model_b")
        distinct = ks[~ks["layer"].isin(list(duplicates))]
        mean_d = distinct.groupby("layer", observed=True, sort=False)["ks_statistic"].mean()
        return [str(mean_d.idxmax())], notes
    names = [plot_layers] if isinstance(plot_layers, str) else list(plot_layers)
    unknown = [n for n in names if n not in layers]
    if unknown or not names:
        raise ConfigError(
            f"plot_layers {names} must name analysed layers {layers}, or be 'all' or "
            "'most_separated'"
        )
    return names, []


def plot_selectivity(
    frame: pd.DataFrame,
    layers: Sequence[str] | None = None,
    ks: pd.DataFrame | None = None,
    width: str = "auto",
    title: str | None = None,
    bins: int = 40,
    comparison: pd.DataFrame | None = None,
) -> Figure:
    """Overlaid density histograms of every model's SI, one panel per layer.

    Args:
        frame: Long-form SI table as from :func:`reaf_lightning.analysis.stats.selectivity_frame`
            (a ``run`` column: several networks per model).
        layers: Panels to draw, in order; default every layer of ``frame``.
        ks: Per-layer KS tests; shown (D and p) in each panel when they are of one pair.
        width: ``"column"`` (3.5 in), ``"page"`` (7.16 in) or ``"auto"``
            (column for one panel, page for more).
        title: Optional figure title (IEEE figures usually leave it to the caption).
        bins: Histogram bins over [0, 1], shared by all models and panels.
        comparison: :func:`reaf_lightning.analysis.seeds.compare_models`'s table; its mean
            SI difference and interval are shown when both models have several networks.

    Returns:
        The matplotlib figure (close it with ``plt.close(fig)``).
    """
    layers = list(frame["layer"].cat.categories) if layers is None else list(layers)
    models = list(frame["model"].cat.categories)
    colours = dict(zip(models, palette(len(models))))
    data = frame[np.isfinite(frame["si"])]
    if "run" not in data:
        data = data.assign(run="")
    # SI lies in [0, 1] for non-negative activations; widen only if needed.
    lo = min(0.0, float(data["si"].min())) if len(data) else 0.0
    hi = max(1.0, float(data["si"].max())) if len(data) else 1.0
    edges = np.linspace(lo, hi, bins + 1)
    ncols = min(len(layers), MAX_COLUMNS)
    nrows = math.ceil(len(layers) / ncols)
    if width == "auto":
        width = "column" if ncols == 1 else "page"
    fig_width = {"column": COLUMN_WIDTH_IN, "page": PAGE_WIDTH_IN}[width]
    height = PANEL_HEIGHT_IN * nrows + (0.35 if title else 0.0) + 0.25
    with figure_style():
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(fig_width, height), sharex=True, sharey=True,
            squeeze=False, layout="constrained",
        )  # fmt: skip
        for ax in axes.flat[len(layers) :]:
            ax.set_visible(False)
        for ax, layer in zip(axes.flat, layers):
            panel = data[data["layer"] == layer]
            for model in models:
                _draw_model(ax, panel[panel["model"] == model], edges, colours[model])
            _annotate(ax, panel, models, colours, _pair_row(ks, layer), _row(comparison, layer))
            ax.set_title(layer, pad=2)
            ax.set_xlim(lo, hi)
            ax.set_xlabel("class selectivity index" if ax in axes[-1] else "")
            ax.set_ylabel("density" if ax in axes[:, 0] else "")
        # Headroom above the tallest bar for the means and the comparison (shared y axis).
        axes.flat[0].set_ylim(0, axes.flat[0].get_ylim()[1] * HEADROOM)
        if (lo, hi) == (0.0, 1.0):
            axes.flat[0].set_xticks([0, 0.5, 1] if ncols > 1 else [0, 0.25, 0.5, 0.75, 1])
        handles = [
            matplotlib.patches.Patch(facecolor=colours[m], edgecolor=colours[m], alpha=0.6,
                                     label=_legend(m, data))
            for m in models
        ]  # fmt: skip
        fig.legend(handles=handles, loc="outside upper center", ncols=len(models), frameon=False)
        if title:
            fig.suptitle(title)
    return fig


def _legend(model: str, data: pd.DataFrame) -> str:
    runs = data.loc[data["model"] == model, "run"].nunique()
    return f"{model} ({runs} seeds)" if runs > 1 else model


def _draw_model(ax, part: pd.DataFrame, edges: np.ndarray, colour) -> None:
    """The mean density over the model's networks, and with several the band of their range."""
    densities = [
        np.histogram(group["si"].to_numpy(), bins=edges, density=True)[0]
        for _, group in part.groupby("run", sort=False)
        if len(group)
    ]
    if not densities:
        return
    stacked = np.vstack(densities)
    ax.stairs(stacked.mean(axis=0), edges, fill=True, color=colour, alpha=0.3, linewidth=0)
    ax.stairs(stacked.mean(axis=0), edges, color=colour, linewidth=0.8)
    if len(densities) > 1:
        ax.stairs(stacked.max(axis=0), edges, baseline=stacked.min(axis=0), fill=True,
                  color=colour, alpha=0.25, linewidth=0)  # fmt: skip


def _row(table: pd.DataFrame | None, layer: str) -> pd.Series | None:
    if table is None:
        return None
    rows = table[(table["layer"] == layer) & (table["measure"] == "mean_si")]
    return rows.iloc[0] if len(rows) else None


def _pair_row(ks: pd.DataFrame | None, layer: str) -> pd.Series | None:
    """The layer's KS result when the table holds one pair of networks."""
    if ks is None:
        return None
    rows = ks[ks["layer"] == layer]
    return rows.iloc[0] if len(rows) == 1 else None


def _annotate(ax, panel: pd.DataFrame, models: list[str], colours, ks_row, diff_row) -> None:
    """Each model's mean SI (over its seeds: mean ± std) as a dashed line and as text, plus
    the difference over seeds with its interval, or the one pair's KS result (D, p)."""
    lines = []
    for model in models:
        means = panel[panel["model"] == model].groupby("run", sort=False)["si"].mean()
        if means.size:
            mean = float(means.mean())
            ax.axvline(mean, color=colours[model], linestyle="--", linewidth=0.8)
            spread = f" ± {means.std():.3f}" if means.size > 1 else ""
            lines.append((f"mean {mean:.3f}{spread}", colours[model]))
    if diff_row is not None and min(diff_row["runs_a"], diff_row["runs_b"]) > 1:
        half = (diff_row["ci_high"] - diff_row["ci_low"]) / 2  # Welch's interval is symmetric
        lines.append((f"Δ {diff_row['difference']:+.3f} ± {half:.3f}", "black"))
    elif ks_row is not None and not math.isnan(ks_row["ks_statistic"]):
        p = max(float(ks_row["p_value"]), 1e-99)
        lines.append((f"one pair: KS D={ks_row['ks_statistic']:.2f}, p={p:.2g}", "black"))
    for i, (text, color) in enumerate(lines):
        ax.text(0.97, 0.96 - 0.12 * i, text, transform=ax.transAxes, ha="right", va="top",
                color=color, bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5,
                                   "alpha": 0.8})  # fmt: skip


def output_paths(
    output_dir: str | Path, stem: str, with_ks: bool, with_seeds: bool = False
) -> dict[str, Path]:
    """The files :func:`save_selectivity_outputs` writes (``stem`` checked to stay in the dir).

    Args:
        output_dir: Destination directory.
        stem: Common file-name prefix.
        with_ks: Two models: the KS tests and the difference over seeds too.
        with_seeds: The models over their seeds.

    Raises:
        ConfigError: ``stem`` is not a plain file-name prefix.
    """
    out = Path(output_dir)
    check_stem(stem)
    paths = {
        "png": out / f"{stem}.png",
        "pdf": out / f"{stem}.pdf",
        "csv": out / f"{stem}.csv",
        "summary": out / f"{stem}_summary.csv",
    }
    if with_seeds:
        paths["seeds"] = out / f"{stem}_seeds.csv"
    if with_ks:
        if with_seeds:
            paths["difference"] = out / f"{stem}_difference.csv"
        paths["ks"] = out / f"{stem}_ks.csv"
    return paths


def save_selectivity_outputs(
    frame: pd.DataFrame,
    summary: pd.DataFrame,
    output_dir: str | Path,
    stem: str = "selectivity",
    ks: pd.DataFrame | None = None,
    title: str | None = None,
    layers: Sequence[str] | None = None,
    width: str = "auto",
    inputs: Sequence[str | Path] = (),
    seeds: pd.DataFrame | None = None,
    difference: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write the figure (PNG, PDF), raw SI values and the tables, all or nothing.

    Args:
        frame: Long-form SI table (``layer``, ``unit``, ``model``, [``run``,] ``si``).
        summary: Per layer and network statistics (:func:`reaf_lightning.analysis.stats.summarize`).
        output_dir: Destination directory (created if missing).
        stem: Common file-name prefix.
        ks: Optional per-layer KS tests (:func:`reaf_lightning.analysis.stats.ks_tests`).
        title: Optional figure title.
        layers: Panels to draw (see :func:`plot_selectivity`).
        width: Figure width (see :func:`plot_selectivity`).
        inputs: The files the analysis read; no output may be one of them.
        seeds: Optional models over their seeds (:func:`reaf_lightning.analysis.seeds.over_seeds`).
        difference: With ``seeds`` and ``ks``: the models' difference over seeds
            (:func:`reaf_lightning.analysis.seeds.compare_models`).

    Returns:
        ``{"png", "pdf", "csv", "summary", ["seeds"], ["difference"], ["ks"]}`` -> final paths.

    Raises:
        ConfigError: a ``stem`` that would leave ``output_dir``.
        OutputError: an output breaks a rule of :func:`reaf_lightning.io.check_outputs`.
    """
    if seeds is not None and ks is not None and difference is None:
        raise ValueError("two models over their seeds need the difference table too")
    paths = output_paths(output_dir, stem, with_ks=ks is not None, with_seeds=seeds is not None)
    tables = {"summary": summary, "seeds": seeds, "difference": difference, "ks": ks}
    fig = plot_selectivity(
        frame, layers=layers, ks=ks, width=width, title=title, comparison=difference
    )
    columns = [c for c in ("layer", "unit", "model", "run", "si") if c in frame]
    try:
        with atomic_outputs(list(paths.values()), inputs=inputs) as temps:
            tmp = dict(zip(paths, temps))
            save_figure(fig, {"png": tmp["png"], "pdf": tmp["pdf"]})
            frame[columns].to_csv(tmp["csv"], index=False, float_format="%.8g")
            for name, table in tables.items():
                if name in tmp:
                    table.to_csv(tmp[name], index=False, float_format="%.8g")
    finally:
        plt.close(fig)
    return paths
