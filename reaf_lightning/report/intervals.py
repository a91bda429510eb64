"""Confidence intervals over seeds: Student's t for a row's mean, Welch's for a difference.

Not part of the paper, which prints one number per row without a spread. Ours:
a seed is the unit of replication (each seed's final error is one observation
of the same experiment), so a row's mean gets the two-sided Student t interval
with ``n - 1`` degrees of freedom, and the difference between a REAF row and its
baseline gets Welch's interval (unequal variances, Welch-Satterthwaite degrees
of freedom), the usual choice when the two rows may have different seed counts
and spreads. One seed gives no interval (``NaN``): its spread is unknown.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy.stats import t as student_t

__all__ = ["LEVEL", "difference_interval", "mean_interval"]

#: The confidence level of every interval ``reaf-report`` prints.
LEVEL = 0.95


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if math.isfinite(v)]


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """``(low, high)``: the Student t interval of the mean of the finite ``values``.

    ``mean ± t(level, n - 1) * s / sqrt(n)`` with ``s`` the sample standard
    deviation; ``(NaN, NaN)`` for fewer than two values.
    """
    x = _finite(values)
    if len(x) < 2:
        return math.nan, math.nan
    mean = statistics.fmean(x)
    t = float(student_t.ppf(0.5 + level / 2, len(x) - 1))
    half = t * statistics.stdev(x) / math.sqrt(len(x))
    return mean - half, mean + half


def difference_interval(
    a: Sequence[float], b: Sequence[float], level: float = LEVEL
) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), low, high)``: the difference and its Welch t interval.

    The interval is ``NaN`` when either side has fewer than two finite values; the
    difference is ``NaN`` when either side has none. Two sides without any spread
    give the difference itself as both ends.
    """
    x, y = _finite(a), _finite(b)
    if not x or not y:
        return math.nan, math.nan, math.nan
    diff = statistics.fmean(x) - statistics.fmean(y)
    if len(x) < 2 or len(y) < 2:
        return diff, math.nan, math.nan
    vx, vy = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
    if vx + vy == 0:
        return diff, diff, diff
    spread = vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1)
    dof = (vx + vy) ** 2 / spread if spread > 0 else math.inf  # (a square that underflowed)
    half = float(student_t.ppf(0.5 + level / 2, dof)) * math.sqrt(vx + vy)
    return diff, diff - half, diff + half
