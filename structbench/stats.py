"""Summary statistics of stored samples, shared by the measurements that take them and the
reports that draw them (which must not import measurement code)."""
from __future__ import annotations

import statistics
from typing import Sequence

NOISY = 0.1
"""Spread (IQR / median) of a measurement's repeats above which it is flagged noisy: a 10 %
spread hides the effects a comparison looks for."""


def quartiles(samples: Sequence[float]) -> tuple[float, float]:
    """First and third quartiles (both the sample itself when there is one)."""
    if len(samples) < 2:
        return samples[0], samples[0]
    q = statistics.quantiles(samples, n=4, method="inclusive")
    return q[0], q[2]


def spread(samples: Sequence[float]) -> float:
    """Interquartile range over the median: how far a measurement's repeats disagree."""
    q1, q3 = quartiles(samples)
    return (q3 - q1) / statistics.median(samples)


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of ``values``: the order statistics
    ``(x_(k), x_(n+1-k))`` with the largest ``k`` whose binomial coverage is at least
    ``confidence``. Timing samples have heavy right tails (a preempted block), so a t-interval
    on them would be too wide in one direction and too narrow in the other. With fewer samples
    than the confidence needs (5 for 95 %) the interval is the full range."""
    from scipy.stats import binom

    ordered, n = sorted(values), len(values)
    k = max(1, int(binom.ppf((1 - confidence) / 2, n, 0.5)))  # P(Bin(n, 1/2) < k) <= (1 - confidence) / 2
    while k > 1 and 1 - 2 * binom.cdf(k - 1, n, 0.5) < confidence:
        k -= 1
    return ordered[k - 1], ordered[n - k]
