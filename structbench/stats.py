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
