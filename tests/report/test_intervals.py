"""The intervals over seeds (``report.intervals``) against SciPy's t-tests and by hand."""

from __future__ import annotations

import math

import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from reaf_lightning.report.intervals import difference_interval, mean_interval

#: Errors in percent as a run measures them (to 1e-4: one image in 10,000 is 0.01 %).
errors = st.lists(st.floats(0.0, 100.0).map(lambda v: round(v, 4)), min_size=2, max_size=8)


def test_the_mean_interval_by_hand():
    # 1, 2, 3: mean 2, s = 1, t(0.975, 2) = 4.3027 (a printed t table): 2 +- 4.3027 / sqrt(3)
    low, high = mean_interval([1.0, 2.0, 3.0])
    half = 4.3027 / math.sqrt(3)
    assert (low, high) == pytest.approx((2 - half, 2 + half), rel=1e-4)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # SciPy, near-equal values
@settings(max_examples=100, deadline=None)
@given(errors)
def test_the_mean_interval_is_scipys_one_sample_t_interval(values):
    low, high = mean_interval(values)
    if len(set(values)) == 1:
        assert low == pytest.approx(values[0]) and high == pytest.approx(values[0])
        return
    ref = scipy.stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ref.low, ref.high), rel=1e-9, abs=1e-9)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
@settings(max_examples=100, deadline=None)
@given(errors, errors)
def test_the_difference_interval_is_scipys_welch_interval(a, b):
    diff, low, high = difference_interval(a, b)
    assert diff == pytest.approx(sum(a) / len(a) - sum(b) / len(b), abs=1e-9)
    if len(set(a)) == 1 and len(set(b)) == 1:
        assert low == high == diff  # no spread on either side
        return
    ref = scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ref.low, ref.high), rel=1e-9, abs=1e-9)


def test_one_seed_gives_no_interval_and_non_finite_values_do_not_count():
    assert all(math.isnan(v) for v in mean_interval([22.0]))
    diff, low, high = difference_interval([21.0], [22.0, 23.0])
    assert diff == pytest.approx(-1.5) and math.isnan(low) and math.isnan(high)
    assert mean_interval([1.0, 2.0, 3.0, math.nan]) == mean_interval([1.0, 2.0, 3.0])
    assert all(math.isnan(v) for v in difference_interval([], [1.0, 2.0]))
