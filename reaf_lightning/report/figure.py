"""Table 3 as a figure: top-1 error against MACs, ours (mean ± std over seeds) beside the paper's.

Every row sits at *our* MAC count of its network on CIFAR-100 (32x32, as
``reaf-zoo`` counts it), for both points: the paper's GFLOPs are
about 0.94x our MACs, so plotting each at its own count would separate the two
points of one row (our choice; the axis label says so). The paper's point is
shifted right and ours left by a small fixed amount so that neither hides the
other. Drawn in the package's one figure style (:mod:`reaf_lightning.figure_style`:
one IEEE column, 3.5 in wide, 8-pt text, TrueType fonts, the colour-blind-safe
palette).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from reaf_lightning.figure_style import COLUMN_WIDTH_IN, figure_style, palette, save_figure
from reaf_lightning.paper.compare import row_gmacs

__all__ = ["draw_table3_figure", "save_table3_figure", "table3_figure_paths"]

_DODGE = 0.15  # fraction of the median gap between neighbouring rows' MACs


def _label(row_id: str) -> str:
    """``reaf_resnet50_c72_72_4-3-4`` -> ``4-3-4``; a baseline keeps its name."""
    last = row_id.rsplit("_", 1)[-1]
    return last if last.count("-") == 2 else row_id


def draw_table3_figure(frame: pd.DataFrame):
    """Draw Table 3's rows of ``frame`` (:func:`~reaf_lightning.report.summary.report_frame`).

    Returns the matplotlib figure (save it with
    :func:`reaf_lightning.figure_style.save_figure`, close it with ``plt.close``).
    Rows without our runs show only the paper's point; rows without a paper
    number only ours.
    """
    import matplotlib.pyplot as plt

    rows = frame[frame["table"] == "table3"]
    rows = rows[(rows["n_seeds"] > 0) | rows["paper_top1_err"].notna()].copy()
    rows["x"] = rows["row"].map(row_gmacs("table3", set(rows["row"])))
    xs = sorted(set(rows["x"].dropna()))
    gaps = [b - a for a, b in zip(xs, xs[1:]) if b > a]
    dodge = _DODGE * (sorted(gaps)[len(gaps) // 2] if gaps else 0.01)
    ours = rows[rows["n_seeds"] > 0]
    paper = rows.dropna(subset=["paper_top1_err"])
    ours_colour, paper_colour = palette(2)
    with figure_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 2.6), layout="constrained")
        ax.scatter(
            paper["x"] + dodge, paper["paper_top1_err"], marker="s", s=14,
            color=paper_colour, label="paper", zorder=3,
        )  # fmt: skip
        ax.errorbar(
            ours["x"] - dodge, ours["top1_err_mean"], yerr=ours["top1_err_std"].fillna(0.0),
            fmt="o", capsize=2, elinewidth=0.8, color=ours_colour,
            label="ours (mean ± std over seeds)", zorder=3,
        )  # fmt: skip
        # Thirty labels do not fit a 3.5 in column: name the rows with runs (and the
        # baseline), which are the ones a reader compares with the paper.
        named = ours if len(ours) else paper
        baseline = paper[paper["row"] == "resnet50"]
        labelled = pd.concat([named, baseline]).drop_duplicates("row").sort_values("x")
        for i, row in enumerate(labelled.to_dict("records")):
            y = row["paper_top1_err"]
            y = row["top1_err_mean"] if y is None or math.isnan(y) else y
            ax.annotate(  # above and below in turn, so that neighbours do not overlap
                _label(row["row"]), (row["x"], y), xytext=(0, 4 if i % 2 == 0 else -10),
                textcoords="offset points", ha="center",
            )  # fmt: skip
        ax.set_xlabel("GMACs per image (our count; paper GFLOPs ≈ 0.94x)")
        ax.set_ylabel("top-1 error (%)")
        ax.set_title("Table 3: REAF-ResNet50 on CIFAR-100")
        fig.legend(loc="outside lower center", ncols=2)  # never over a point
    return fig


def table3_figure_paths(stem: Path) -> dict[str, Path]:
    """``<stem>.png`` and ``<stem>.pdf`` (a ``.png`` or ``.pdf`` suffix of ``stem`` is dropped)."""
    stem = stem.with_suffix("") if stem.suffix in (".png", ".pdf") else stem
    return {"png": stem.with_name(stem.name + ".png"), "pdf": stem.with_name(stem.name + ".pdf")}


def save_table3_figure(frame: pd.DataFrame, temporaries: dict[str, Path]) -> None:
    """Draw and save the figure to ``{"png": ..., "pdf": ...}`` (the command's temporaries)."""
    import matplotlib.pyplot as plt

    fig = draw_table3_figure(frame)
    try:
        save_figure(fig, temporaries)
    finally:
        plt.close(fig)
