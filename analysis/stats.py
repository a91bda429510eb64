"""Summary statistics and two-sample tests of selectivity distributions (Figures 2-4).

The paper's claims are about *shifts* of the SI distribution (SI grows with
depth; REAF raises SI, most visibly at ``layer1``; ResNeXt50 and ResNet50
differ most at ``layer4``). Histograms alone invite over-reading, so every
figure comes with per-layer summaries (mean, median, fraction of units with
SI > 0.5) and a two-sample Kolmogorov-Smirnov test per layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["format_table", "ks_tests", "selectivity_frame", "summarize"]

#: A unit counts as "class selective" above this SI (half-way between none and one class).
HIGH_SI = 0.5


def selectivity_frame(results: Mapping[str, Mapping[str, Tensor]]) -> pd.DataFrame:
    """Long-form table of SI values: one row per (layer, unit, model).

    Args:
        results: ``{model label: {layer: (units,) SI tensor}}``.

    Returns:
        DataFrame with columns ``layer``, ``unit``, ``model``, ``si`` (layers and
        models keep their input order as ordered categoricals).
    """
    frames = []
    for model, per_layer in results.items():
        for layer, si in per_layer.items():
            values = si.detach().double().cpu().numpy()
            frames.append(
                pd.DataFrame(
                    {"layer": layer, "unit": np.arange(values.size), "model": model, "si": values}
                )
            )
    if not frames:
        raise ValueError("results is empty: nothing to tabulate")
    frame = pd.concat(frames, ignore_index=True)
    layers = list(dict.fromkeys(frame["layer"]))
    models = list(results)
    frame["layer"] = pd.Categorical(frame["layer"], categories=layers, ordered=True)
    frame["model"] = pd.Categorical(frame["model"], categories=models, ordered=True)
    return frame


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per layer and model: number of units, mean, median, std and fraction with SI > 0.5.

    Non-finite SI values (possible only for layers with negative activations)
    are excluded and counted in ``non_finite``.
    """
    rows = []
    for (layer, model), group in frame.groupby(["layer", "model"], observed=True, sort=True):
        si = group["si"].to_numpy()
        finite = si[np.isfinite(si)]
        rows.append(
            {
                "layer": layer,
                "model": model,
                "units": int(si.size),
                "mean": float(finite.mean()) if finite.size else math.nan,
                "median": float(np.median(finite)) if finite.size else math.nan,
                "std": float(finite.std()) if finite.size else math.nan,
                "frac_si_gt_0.5": float((finite > HIGH_SI).mean()) if finite.size else math.nan,
                "non_finite": int(si.size - finite.size),
            }
        )
    return pd.DataFrame(rows)


def ks_tests(frame: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Two-sample Kolmogorov-Smirnov test per layer between the first two models.

    Args:
        frame: Output of :func:`selectivity_frame` with at least two models.
        alpha: Significance level for the ``differ`` column (not corrected for
            the number of layers; the p-values are reported for that).

    Returns:
        DataFrame with ``layer``, ``model_a``, ``model_b``, ``ks_statistic``,
        ``p_value``, ``differ`` and ``shift`` (median of b minus median of a,
        the direction of the difference).

    Raises:
        ValueError: for fewer than two models or alpha outside (0, 1).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    models = list(frame["model"].cat.categories)
    if len(models) < 2:
        raise ValueError(f"the KS test needs two models, got {models}")
    model_a, model_b = models[:2]
    rows = []
    for layer, group in frame.groupby("layer", observed=True, sort=True):
        a = group.loc[group["model"] == model_a, "si"].to_numpy()
        b = group.loc[group["model"] == model_b, "si"].to_numpy()
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if a.size == 0 or b.size == 0:
            stat, p = math.nan, math.nan
        else:
            result = ks_2samp(a, b)
            stat, p = float(result.statistic), float(result.pvalue)
        rows.append(
            {
                "layer": layer,
                "model_a": model_a,
                "model_b": model_b,
                "ks_statistic": stat,
                "p_value": p,
                "differ": bool(p < alpha) if not math.isnan(p) else False,
                "shift": float(np.median(b) - np.median(a)) if a.size and b.size else math.nan,
            }
        )
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """Fixed-width text rendering for the terminal (4 significant decimals)."""
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
