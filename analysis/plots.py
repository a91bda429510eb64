"""Figures 2-4 of the paper: overlaid class-selectivity histograms per layer.

One panel per layer (``layer1`` .. ``layer4``, ``avgpool``), the density
histograms of the SI of two models overlaid, as in the paper's Figures 2
(ResNet50 vs REAF-ResNet50), 3 (ResNet101 vs REAF-ResNet101) and 4 (ResNet50
vs ResNeXt50). The figure is saved as PNG and PDF next to the raw SI values
(CSV) and the summary statistics, all written atomically; if a W&B run is
active the figure and the summary are logged to it as well.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .atomic import atomic_outputs  # noqa: E402

__all__ = ["log_to_wandb", "plot_selectivity", "save_selectivity_outputs"]


def plot_selectivity(frame: pd.DataFrame, title: str | None = None, bins: int = 40) -> Figure:
    """Draw one density-histogram panel per layer with all models overlaid.

    Args:
        frame: Long-form SI table (``layer``, ``unit``, ``model``, ``si``) as
            from :func:`analysis.stats.selectivity_frame`.
        title: Optional figure title (e.g. "Figure 2").
        bins: Number of histogram bins; shared by all models of a panel so the
            overlaid densities are comparable.

    Returns:
        The matplotlib figure (close it with ``plt.close(fig)``).
    """
    data = frame[np.isfinite(frame["si"])]
    layers = list(frame["layer"].cat.categories)
    models = list(frame["model"].cat.categories)
    palette = dict(zip(models, sns.color_palette("colorblind", len(models)), strict=True))
    width = 3.4 * len(layers)
    fig, axes = plt.subplots(1, len(layers), figsize=(width, 3.4), squeeze=False)
    # SI lies in [0, 1] for non-negative activations; widen only if needed.
    lo = min(0.0, float(data["si"].min())) if len(data) else 0.0
    hi = max(1.0, float(data["si"].max())) if len(data) else 1.0
    edges = np.linspace(lo, hi, bins + 1)
    for ax, layer in zip(axes[0], layers, strict=True):
        panel = data[data["layer"] == layer]
        sns.histplot(
            data=panel,
            x="si",
            hue="model",
            hue_order=models,
            palette=palette,
            stat="density",
            common_norm=False,  # each model's histogram integrates to 1
            bins=edges,
            element="step",
            alpha=0.35,
            ax=ax,
            legend=False,
        )
        ax.set_title(layer)
        ax.set_xlabel("class selectivity index")
        ax.set_ylabel("density")
        ax.set_xlim(lo, hi)
    handles = [
        matplotlib.patches.Patch(facecolor=palette[m], edgecolor=palette[m], alpha=0.6, label=m)
        for m in models
    ]
    axes[0][0].legend(handles=handles, loc="upper right", frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_selectivity_outputs(
    frame: pd.DataFrame,
    summary: pd.DataFrame,
    output_dir: str | Path,
    stem: str = "selectivity",
    ks: pd.DataFrame | None = None,
    title: str | None = None,
    dpi: int = 150,
) -> dict[str, Path]:
    """Write the figure (PNG, PDF), raw SI values and summaries, all or nothing.

    Args:
        frame: Long-form SI table (``layer``, ``unit``, ``model``, ``si``).
        summary: Per layer/model statistics (:func:`analysis.stats.summarize`).
        output_dir: Destination directory (created if missing).
        stem: Common file-name prefix.
        ks: Optional per-layer KS tests (:func:`analysis.stats.ks_tests`).
        title: Optional figure title.
        dpi: Resolution of the PNG.

    Returns:
        ``{"png", "pdf", "csv", "summary", ["ks"]}`` -> final paths.
    """
    out = Path(output_dir)
    paths = {
        "png": out / f"{stem}.png",
        "pdf": out / f"{stem}.pdf",
        "csv": out / f"{stem}.csv",
        "summary": out / f"{stem}_summary.csv",
    }
    if ks is not None:
        paths["ks"] = out / f"{stem}_ks.csv"
    fig = plot_selectivity(frame, title=title)
    try:
        with atomic_outputs(list(paths.values())) as temps:
            tmp = dict(zip(paths, temps, strict=True))
            fig.savefig(tmp["png"], format="png", dpi=dpi)
            fig.savefig(tmp["pdf"], format="pdf")
            columns = ["layer", "unit", "model", "si"]
            frame[columns].to_csv(tmp["csv"], index=False, float_format="%.8g")
            summary.to_csv(tmp["summary"], index=False, float_format="%.8g")
            if ks is not None:
                ks.to_csv(tmp["ks"], index=False, float_format="%.8g")
        log_to_wandb(fig, summary, ks, key=stem)
    finally:
        plt.close(fig)
    return paths


def log_to_wandb(
    fig: Figure, summary: pd.DataFrame, ks: pd.DataFrame | None = None, key: str = "selectivity"
) -> bool:
    """Log the figure and the summary tables to the active W&B run, if there is one.

    W&B is looked up in ``sys.modules`` rather than imported: if nothing has
    imported it, no run can be active, and the analysis stays free of the
    (slow) import.

    Returns:
        Whether anything was logged.
    """
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return False
    payload = {
        f"{key}/figure": wandb.Image(fig),
        f"{key}/summary": wandb.Table(dataframe=_plain(summary)),
    }
    if ks is not None:
        payload[f"{key}/ks"] = wandb.Table(dataframe=_plain(ks))
    wandb.run.log(payload)
    return True


def _plain(table: pd.DataFrame) -> pd.DataFrame:
    """Categoricals as strings: W&B tables want plain column types."""
    out = table.copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.CategoricalDtype):
            out[column] = out[column].astype(str)
    return out
