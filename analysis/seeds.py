"""Two models compared over their seeds: each trained network is one replicate (ours).

The paper compares one network of each model (§IV-E, Figures 2-4). A per-channel test
between two networks (:func:`reaf_lightning.analysis.stats.ks_tests`) treats the channels
of one network as independent samples, which they are not, and cannot say whether
another seed would give the same difference. Here the unit is the network: each run
(seed) of a model gives one number per measure, its top-1 accuracy on the analysed
images and its mean class selectivity per layer; a model's numbers over its seeds get
a mean, a standard deviation and a Student t interval, and the difference between the
two models (model_b minus model_a) a Welch interval
(:mod:`reaf_lightning.report.intervals`, the intervals ``reaf-report`` prints). One
network per model gives no interval: the spread over seeds is then unknown.
"""

from __future__ import annotations

import math
import statistics

import pandas as pd

from reaf_lightning.report.intervals import difference_interval, mean_interval

__all__ = ["MEASURES", "compare_models", "over_seeds", "per_network"]

#: What is compared, per network: top-1 accuracy, and the mean SI of each layer.
MEASURES = ("acc1", "mean_si")


def per_network(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (measure, layer, model, run) with the network's ``value``.

    Args:
        summary: :func:`reaf_lightning.analysis.stats.summarize`'s table (with ``acc1``
            when the accuracies are known).
    """
    rows = []
    for row in summary.itertuples(index=False):
        rows.append(("mean_si", str(row.layer), str(row.model), row.run, float(row.mean)))
    if "acc1" in summary:
        networks = summary.drop_duplicates(["model", "run"])
        for row in networks.itertuples(index=False):
            rows.append(("acc1", "", str(row.model), row.run, float(row.acc1)))
    table = pd.DataFrame(rows, columns=["measure", "layer", "model", "run", "value"])
    order = {m: i for i, m in enumerate(MEASURES)}
    return table.sort_values("measure", key=lambda c: c.map(order), kind="stable")


def _groups(summary: pd.DataFrame) -> dict[tuple[str, str], dict[str, list[float]]]:
    """``{(measure, layer): {model: values over its runs}}`` in table order."""
    out: dict[tuple[str, str], dict[str, list[float]]] = {}
    for row in per_network(summary).itertuples(index=False):
        out.setdefault((row.measure, row.layer), {}).setdefault(row.model, []).append(row.value)
    return out


def over_seeds(summary: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per measure, layer and model: runs, mean, sample std and the Student t interval.

    Non-finite values (an accuracy that could not be scored) do not count.
    """
    rows = []
    for (measure, layer), models in _groups(summary).items():
        for model, values in models.items():
            finite = [v for v in values if math.isfinite(v)]
            low, high = mean_interval(finite, level)
            rows.append(
                {
                    "measure": measure,
                    "layer": layer,
                    "model": model,
                    "runs": len(finite),
                    "mean": statistics.fmean(finite) if finite else math.nan,
                    "std": statistics.stdev(finite) if len(finite) > 1 else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows)


def compare_models(
    summary: pd.DataFrame, model_a: str, model_b: str, level: float = 0.95
) -> pd.DataFrame:
    """Per measure and layer: ``model_b`` minus ``model_a`` over their seeds, with Welch's
    interval (``NaN`` while either model has fewer than two networks)."""
    rows = []
    for (measure, layer), models in _groups(summary).items():
        a = [v for v in models.get(model_a, []) if math.isfinite(v)]
        b = [v for v in models.get(model_b, []) if math.isfinite(v)]
        diff, low, high = difference_interval(b, a, level)
        rows.append(
            {
                "measure": measure,
                "layer": layer,
                "model_a": model_a,
                "model_b": model_b,
                "runs_a": len(a),
                "runs_b": len(b),
                "difference": diff,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows)
