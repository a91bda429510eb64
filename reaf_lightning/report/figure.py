"""Table 3 as a figure: top-1 error against MACs, ours (mean ± std over seeds) beside the paper's.

Every row sits at *our* MAC count of its network on CIFAR-100 (32x32, as
``reaf-zoo`` counts it), for both points: the paper's GFLOPs are
about 0.94x our MACs, so plotting each at its own count would separate the two
points of one row (our choice; the axis label says so). The paper's point is
shifted right and ours left by a small fixed amount so that neither hides the
other. Sized for one IEEE column (3.5 in wide), fonts embedded as TrueType
(``pdf.fonttype 42``) as IEEE's PDF checker asks.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from reaf_lightning.io import atomic_outputs
from reaf_lightning.paper.compare import row_gmacs

__all__ = ["COLUMN_WIDTH_IN", "table3_figure"]

COLUMN_WIDTH_IN = 3.5
_DODGE = 0.15  # fraction of the median gap between neighbouring rows' MACs


def _label(row_id: str) -> str:
    """``reaf_resnet50_c72_72_4-3-4`` -> ``4-3-4``; a baseline keeps its name."""
    last = row_id.rsplit("_", 1)[-1]
    return last if last.count("-") == 2 else row_id


def table3_figure(frame: pd.DataFrame, stem: Path) -> list[Path]:
    """Draw Table 3's rows of ``frame`` (:func:`~reaf_lightning.report.tables.report_frame`).

    Writes ``<stem>.png`` (300 dpi) and ``<stem>.pdf`` together, atomically,
    and returns their paths. Rows without our runs show only the paper's point;
    rows without a paper number only ours.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = frame[frame["table"] == "table3"]
    rows = rows[(rows["n_seeds"] > 0) | rows["paper_top1_err"].notna()].copy()
    rows["x"] = rows["row"].map(row_gmacs("table3", set(rows["row"])))
    xs = sorted(set(rows["x"].dropna()))
    gaps = [b - a for a, b in zip(xs, xs[1:]) if b > a]
    dodge = _DODGE * (sorted(gaps)[len(gaps) // 2] if gaps else 0.01)
    ours = rows[rows["n_seeds"] > 0]
    paper = rows.dropna(subset=["paper_top1_err"])
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    style = {"pdf.fonttype": 42, "ps.fonttype": 42}
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=0.8):
        with matplotlib.rc_context(style):
            fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 2.6), layout="constrained")
            palette = sns.color_palette("colorblind")
            sns.scatterplot(
                x=paper["x"] + dodge,
                y=paper["paper_top1_err"],
                ax=ax,
                marker="s",
                s=18,
                color=palette[1],
                label="paper",
            )
            ax.errorbar(
                ours["x"] - dodge,
                ours["top1_err_mean"],
                yerr=ours["top1_err_std"].fillna(0.0),
                fmt="o",
                markersize=3.5,
                capsize=2,
                elinewidth=0.8,
                color=palette[0],
                label="ours (mean ± std over seeds)",
            )
            # Thirty labels do not fit a 3.5 in column: name the rows with runs (and the
            # baseline), which are the ones a reader compares with the paper.
            named = ours if len(ours) else paper
            baseline = paper[paper["row"] == "resnet50"]
            labelled = pd.concat([named, baseline]).drop_duplicates("row").sort_values("x")
            for i, row in enumerate(labelled.to_dict("records")):
                y = row["paper_top1_err"]
                y = row["top1_err_mean"] if y is None or math.isnan(y) else y
                ax.annotate(  # above and below in turn, so that neighbours do not overlap
                    _label(row["row"]),
                    (row["x"], y),
                    xytext=(0, 4 if i % 2 == 0 else -9),
                    textcoords="offset points",
                    ha="center",
                    fontsize=5,
                )
            ax.set_xlabel("GMACs per image (our count; paper GFLOPs ≈ 0.94x)")
            ax.set_ylabel("top-1 error (%)")
            ax.set_title("Table 3: REAF-ResNet50 on CIFAR-100", fontsize=7)
            ax.legend(fontsize=6, loc="best")
            with atomic_outputs(paths) as (png, pdf):
                fig.savefig(png, dpi=300)
                fig.savefig(pdf)
            plt.close(fig)
    return paths
