"""Statistics of stored samples: intervals that cover their target as often as they claim."""
from __future__ import annotations

import numpy as np
import pytest

from structbench.stats import median_interval


def test_median_interval_is_the_order_statistics_a_binomial_table_gives() -> None:
    # n = 10 at 95 %: P(Bin(10, 1/2) <= 1) = 0.0107 per side, so (x_(2), x_(9)); x_(3) would cover only 0.89
    assert median_interval(list(range(10))) == (1, 8)
    assert median_interval([5.0, 1.0, 3.0]) == (1.0, 5.0)  # too few samples for 95 %: the full range
    assert median_interval([2.0]) == (2.0, 2.0)


def test_median_interval_covers_the_true_median_at_least_95_percent_on_skewed_data() -> None:
    rng = np.random.default_rng(7)
    draws = rng.lognormal(mean=0.0, sigma=1.0, size=(400, 15))  # true median exp(0) = 1
    hits = sum(lo <= 1.0 <= hi for lo, hi in map(median_interval, draws))
    assert 0.93 <= hits / 400 <= 0.995
    assert median_interval(list(draws[0]), confidence=0.5) != median_interval(list(draws[0]))
    with pytest.raises(IndexError):
        median_interval([])
