"""Every figure of the package is drawn in the one style of ``reaf_lightning.figure_style``."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text

from reaf_lightning.figure_style import COLUMN_WIDTH_IN, FONT_SIZE_PT, PAGE_WIDTH_IN, palette


def _texts(fig) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_text() and t.get_visible()]


def _rounded(colour) -> tuple[float, ...]:
    return tuple(round(v, 3) for v in matplotlib.colors.to_rgb(colour))


def _colours(fig) -> set[tuple[float, ...]]:
    """Every colour of lines, markers and patches drawn (the palette's must be among them)."""
    from matplotlib.collections import Collection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    found = set()
    for artist in fig.findobj(lambda a: isinstance(a, (Line2D, Collection, Patch))):
        if isinstance(artist, Line2D):
            found.add(_rounded(artist.get_color()))
        elif isinstance(artist, Collection):
            found |= {_rounded(c) for c in artist.get_facecolor()}
            found |= {_rounded(c) for c in artist.get_edgecolor()}
        else:
            found |= {_rounded(artist.get_facecolor()), _rounded(artist.get_edgecolor())}
    return found


def _selectivity_figure():
    from reaf_lightning.analysis.plots import plot_selectivity

    rng = np.random.default_rng(0)
    rows = [
        {"layer": layer, "unit": u, "model": model, "si": rng.uniform()}
        for layer in ("layer1", "layer4") for model in ("A", "B") for u in range(20)
    ]  # fmt: skip
    frame = pd.DataFrame(rows)
    for column in ("layer", "model"):
        frame[column] = frame[column].astype("category")
    return plot_selectivity(frame)


def _table3_figure():
    from reaf_lightning.paper.tables import paper_rows
    from reaf_lightning.report.figure import draw_table3_figure

    rows = [r for r in paper_rows("table3")][:3]
    frame = pd.DataFrame([
        {"table": "table3", "row": r.id, "n_seeds": 2, "top1_err_mean": 21.0 + i,
         "top1_err_std": 0.2, "paper_top1_err": r.paper["top1_err"]}
        for i, r in enumerate(rows)
    ])  # fmt: skip
    return draw_table3_figure(frame)


@pytest.mark.slow  # about 6 s each: seaborn, matplotlib and the meta-device MAC counts
@pytest.mark.parametrize(
    "draw, width", [(_selectivity_figure, PAGE_WIDTH_IN), (_table3_figure, COLUMN_WIDTH_IN)]
)
def test_every_figure_has_the_ieee_width_8pt_text_and_the_palette(draw, width, tmp_path):
    import matplotlib.pyplot as plt

    fig = draw()
    try:
        assert fig.get_figwidth() == pytest.approx(width)
        sizes = {t.get_fontsize() for t in _texts(fig)}
        assert sizes == {FONT_SIZE_PT}, sizes
        assert palette(2) and _colours(fig) >= {_rounded(c) for c in palette(2)}
        from reaf_lightning.figure_style import save_figure

        save_figure(fig, {"pdf": tmp_path / "f.pdf"})
        pdf = (tmp_path / "f.pdf").read_bytes()
        assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType, as IEEE asks
    finally:
        plt.close(fig)
