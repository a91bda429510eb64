"""The one style of every figure the package draws (selectivity histograms, Table 3's plot).

Sized and set for an IEEE two-column paper, as the REAF paper was published
(IEEE Access): one column is 3.5 in wide, the full text width 7.16 in; every
text is 8 pt (IEEE's smallest size for figure text); fonts are embedded as
TrueType (``pdf.fonttype 42``), not Type 3, as IEEE's PDF checker asks; colours
come from seaborn's colour-blind-safe palette, in the same order in every
figure (the first model or "ours" is always the first colour). These are our
choices: the paper states no figure style.

Use::

    with figure_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 2.4), layout="constrained")
        ax.plot(..., color=palette(2)[0])
        save_figure(fig, {"png": png_path, "pdf": pdf_path})

This module imports matplotlib only when a figure is drawn and never imports
seaborn at module level, so any room of the package may import it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "COLUMN_WIDTH_IN",
    "DPI",
    "FONT_SIZE_PT",
    "PAGE_WIDTH_IN",
    "RC_PARAMS",
    "figure_style",
    "palette",
    "save_figure",
]

#: IEEE two-column layout: one column and the full text width, in inches.
COLUMN_WIDTH_IN, PAGE_WIDTH_IN = 3.5, 7.16
#: Every text of a figure, in points (IEEE's minimum for figure text).
FONT_SIZE_PT = 8
#: Resolution of PNG files (the PDF is vector).
DPI = 300
#: matplotlib settings of every figure.
RC_PARAMS: dict[str, Any] = {
    "font.size": FONT_SIZE_PT,
    "axes.titlesize": FONT_SIZE_PT,
    "axes.labelsize": FONT_SIZE_PT,
    "xtick.labelsize": FONT_SIZE_PT,
    "ytick.labelsize": FONT_SIZE_PT,
    "legend.fontsize": FONT_SIZE_PT,
    "figure.titlesize": FONT_SIZE_PT,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "axes.linewidth": 0.6,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.color": "#dddddd",
    "axes.axisbelow": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 0.9,
    "lines.markersize": 3.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "legend.frameon": False,
    "savefig.dpi": DPI,
}


def palette(n: int) -> list[tuple[float, float, float]]:
    """The first ``n`` colours of the palette (seaborn's ``colorblind``), as RGB tuples."""
    import seaborn as sns

    return [tuple(c) for c in sns.color_palette("colorblind", n)]


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """Draw inside this block to get the package's style (headless, no window ever opens)."""
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context(RC_PARAMS):
        yield


def save_figure(fig: Any, paths: Mapping[str, str | Path]) -> None:
    """Save ``fig`` in the style's resolution to each ``{format: path}`` (``png``, ``pdf``).

    The paths are usually temporaries of :func:`reaf_lightning.io.atomic_outputs`, so
    that a figure's files appear together with the command's other outputs.
    """
    import matplotlib

    with matplotlib.rc_context(RC_PARAMS):
        for fmt, path in paths.items():
            fig.savefig(path, format=fmt, dpi=DPI)
