"""Summary statistics of selectivity distributions, per network (Figures 2-4).

The paper's claims are about *shifts* of the SI distribution (SI grows with
depth; REAF raises SI, most visibly at ``layer1``; ResNeXt50 and ResNet50
differ most at ``layer4``). Histograms alone invite over-reading, so every
figure comes with per-layer summaries of each network (mean, median, fraction of
units with SI > 0.5, next to the network's accuracy on the same images) and a
two-sample Kolmogorov-Smirnov test per layer *within one pair of networks*: its
samples are the channels of two networks, so its p-value says whether these two
networks' channels differ, not whether the models do (channels of one network are
not independent replicates of the model). The comparison of the models over their
seeds, the replicates, is :mod:`reaf_lightning.analysis.seeds`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import binomtest, ks_2samp

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["at_chance", "format_table", "ks_tests", "selectivity_frame", "summarize"]

#: A unit counts as "class selective" above this SI (half-way between none and one class).
HIGH_SI = 0.5


def selectivity_frame(
    results: Mapping[str, Mapping[str, Tensor] | Mapping[str, Mapping[str, Tensor]]],
) -> pd.DataFrame:
    """Long-form table of SI values: one row per (layer, unit, model, run).

    Args:
        results: ``{model label: {run: {layer: (units,) SI tensor}}}``, or for one network
            per model ``{model label: {layer: (units,) SI tensor}}`` (its run is ``""``).

    Returns:
        DataFrame with columns ``layer``, ``unit``, ``model``, ``run``, ``si`` (layers and
        models keep their input order as ordered categoricals).
    """
    frames = []
    for model, runs in results.items():
        if all(hasattr(v, "detach") for v in runs.values()):
            runs = {"": runs}
        for run, per_layer in runs.items():
            for layer, si in per_layer.items():
                values = si.detach().double().cpu().numpy()
                frames.append(
                    pd.DataFrame(
                        {
                            "layer": layer,
                            "unit": np.arange(values.size),
                            "model": model,
                            "run": run,
                            "si": values,
                        }
                    )  # fmt: skip
                )
    if not frames:
        raise ValueError("results is empty: nothing to tabulate")
    frame = pd.concat(frames, ignore_index=True)
    layers = list(dict.fromkeys(frame["layer"]))
    models = list(results)
    frame["layer"] = pd.Categorical(frame["layer"], categories=layers, ordered=True)
    frame["model"] = pd.Categorical(frame["model"], categories=models, ordered=True)
    return frame


def _runs(frame: pd.DataFrame) -> pd.Series:
    return frame["run"] if "run" in frame else pd.Series("", index=frame.index)


def summarize(
    frame: pd.DataFrame, accuracy: Mapping[tuple[str, str], float | None] | None = None
) -> pd.DataFrame:
    """Per layer and network: its top-1 accuracy on the analysed images, the number of units,
    mean, median, std and fraction with SI > 0.5.

    Args:
        frame: Output of :func:`selectivity_frame`.
        accuracy: ``{(model, run): top-1 accuracy}`` (``None``: not scored); without it
            the ``acc1`` column is left out.

    Non-finite SI values (possible only for layers with negative activations)
    are excluded and counted in ``non_finite``.
    """
    frame = frame.assign(run=_runs(frame))
    rows = []
    keys = ["layer", "model", "run"]
    for (layer, model, run), group in frame.groupby(keys, observed=True, sort=True):
        si = group["si"].to_numpy()
        finite = si[np.isfinite(si)]
        row = {"layer": layer, "model": model, "run": run}
        if accuracy is not None:
            acc = accuracy.get((model, run))
            row["acc1"] = math.nan if acc is None else float(acc)
        row.update(
            {
                "units": int(si.size),
                "mean": float(finite.mean()) if finite.size else math.nan,
                "median": float(np.median(finite)) if finite.size else math.nan,
                "std": float(finite.std()) if finite.size else math.nan,
                "frac_si_gt_0.5": float((finite > HIGH_SI).mean()) if finite.size else math.nan,
                "non_finite": int(si.size - finite.size),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def ks_tests(frame: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Two-sample Kolmogorov-Smirnov test per layer within each pair of networks.

    The first two models' networks are paired in their order (the ``i``-th run of
    model a with the ``i``-th of model b, as many pairs as the smaller model has
    runs). Each test's samples are the channels of the two networks: it says whether
    *these two networks'* selectivity distributions differ, not whether the models do
    (:mod:`reaf_lightning.analysis.seeds` compares those over seeds).

    Args:
        frame: Output of :func:`selectivity_frame` with at least two models.
        alpha: Significance level for the ``differ`` column (not corrected for
            the number of layers or pairs; the p-values are reported for that).

    Returns:
        DataFrame with ``layer``, ``model_a``, ``run_a``, ``model_b``, ``run_b``,
        ``ks_statistic``, ``p_value``, ``differ`` and ``shift`` (median of b minus
        median of a, the direction of the difference).

    Raises:
        ValueError: for fewer than two models or alpha outside (0, 1).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    models = list(frame["model"].cat.categories)
    if len(models) < 2:
        raise ValueError(f"the KS test needs two models, got {models}")
    model_a, model_b = models[:2]
    frame = frame.assign(run=_runs(frame))
    runs = {m: list(dict.fromkeys(frame.loc[frame["model"] == m, "run"])) for m in models[:2]}
    rows = []
    for run_a, run_b in zip(runs[model_a], runs[model_b]):
        for layer, group in frame.groupby("layer", observed=True, sort=True):
            a = group.loc[(group["model"] == model_a) & (group["run"] == run_a), "si"].to_numpy()
            b = group.loc[(group["model"] == model_b) & (group["run"] == run_b), "si"].to_numpy()
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
                    "run_a": run_a,
                    "model_b": model_b,
                    "run_b": run_b,
                    "ks_statistic": stat,
                    "p_value": p,
                    "differ": bool(p < alpha) if not math.isnan(p) else False,
                    "shift": float(np.median(b) - np.median(a)) if a.size and b.size else math.nan,
                }
            )
    return pd.DataFrame(rows)


def at_chance(
    correct: int, total: int, class_counts: Sequence[int], alpha: float
) -> tuple[float, float]:
    """``(chance, p)``: the accuracy of always answering the most frequent class of these
    images, and the one-sided binomial test's p-value of ``correct`` of ``total`` against it.

    ``p >= alpha`` means the network's accuracy cannot be told from chance on these
    images (ours: the most frequent class, not ``1 / classes``, is what a network that
    learned nothing but the class balance reaches).
    """
    chance = max(class_counts) / total if total else math.nan
    if not total:
        return chance, math.nan
    return chance, float(binomtest(correct, total, min(chance, 1.0), alternative="greater").pvalue)


def format_table(table: pd.DataFrame) -> str:
    """Fixed-width text rendering for the terminal (4 significant decimals)."""
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
