"""Statistics of stored samples, shared by the measurements that take them and the reports that
read them (which must not import measurement code).

The intervals here are for figures that are sums over independent units (text windows, test
items) and for the difference of two such figures measured on the very same units:

* a rate ``sum(sums) / sum(counts)`` (mean loss per token over windows) gets a seeded BCa
  bootstrap interval over the units (:func:`rate_interval`);
* the difference of two rates on the same units gets a paired bootstrap interval
  (:func:`paired_rate_difference`): every resample draws the same units for both;
* the mean over a few training seeds gets Student's t interval (:func:`t_interval`);
* a proportion gets lm-evaluation-harness' standard error (:func:`mean_stderr`), and the
  difference of two proportions on the same items the exact McNemar test (:func:`mcnemar`).

A comparison calls one side better only when its interval excludes no difference, or its test
rejects it at ``ALPHA`` (:func:`verdict`).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
RESAMPLES = 9999
"""Bootstrap resamples per interval (SciPy's default)."""
BETTER, WORSE, UNCLEAR = "better", "worse", "not distinguishable"

NOISY = 0.1
"""Spread (IQR / median) of a measurement's repeats above which it is flagged noisy: a 10 %
spread hides the effects a comparison looks for."""


def quartiles(samples: Sequence[float]) -> tuple[float, float]:
    """First and third quartiles (both the sample itself when there is one)."""
    if len(samples) < 2:
        return samples[0], samples[0]
    q = statistics.quantiles(samples, n=4, method="inclusive")
    return q[0], q[2]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided interval; with batched input (arrays of shape
    ``(..., units)``) each field is an array of the leading shape."""

    estimate: float | np.ndarray
    low: float | np.ndarray
    high: float | np.ndarray

    def side(self, null: float = 0.0) -> int:
        """+1 when the whole interval lies above ``null``, -1 when below, 0 when it holds it."""
        return 1 if self.low > null else -1 if self.high < null else 0


def _units(*arrays: Sequence[float] | np.ndarray) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    if any(a.shape != out[0].shape for a in out):
        raise ValueError(f"paired samples must have one shape, got {[a.shape for a in out]}")
    if out[0].ndim == 0 or out[0].shape[-1] < 2:
        raise ValueError(f"an interval needs at least two units, got shape {out[0].shape}")
    return out


def _rate(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(sums, axis=axis) / np.sum(counts, axis=axis)


def _bootstrap(statistic, data: list[np.ndarray], per_unit: np.ndarray, confidence: float, resamples: int,
               seed: int) -> Interval:
    """BCa interval of ``statistic`` over the last axis of ``data`` (resampled together). Where
    every unit has the same ``per_unit`` value the statistic cannot vary: the interval is the
    point (BCa is undefined there)."""
    estimate = statistic(*data, axis=-1)
    constant = np.all(per_unit == per_unit[..., :1], axis=-1)
    if np.all(constant):
        return _as_interval(estimate, estimate, estimate)
    result = scipy_stats.bootstrap(data, statistic, n_resamples=resamples, paired=True, vectorized=True, axis=-1,
                                   confidence_level=confidence, method="BCa", rng=np.random.default_rng(seed))
    low = np.where(constant, estimate, result.confidence_interval.low)
    high = np.where(constant, estimate, result.confidence_interval.high)
    return _as_interval(estimate, low, high)


def _as_interval(estimate: np.ndarray, low: np.ndarray, high: np.ndarray) -> Interval:
    if np.ndim(estimate) == 0:
        return Interval(float(estimate), float(low), float(high))
    return Interval(np.asarray(estimate), np.asarray(low), np.asarray(high))


def rate_interval(sums: Sequence[float] | np.ndarray, counts: Sequence[float] | np.ndarray, *,
                  confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """``sum(sums) / sum(counts)`` with a seeded BCa bootstrap interval over the units (the last
    axis): e.g. the mean loss per token over text windows, each window one unit."""
    sums, counts = _units(sums, counts)
    return _bootstrap(_rate, [sums, counts], sums / counts, confidence, resamples, seed)


def paired_rate_difference(sums_a: Sequence[float] | np.ndarray, sums_b: Sequence[float] | np.ndarray,
                           counts: Sequence[float] | np.ndarray, *, confidence: float = CONFIDENCE,
                           resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """``(sum(sums_a) - sum(sums_b)) / sum(counts)``, two rates over the same units, with a seeded
    paired BCa bootstrap interval: each resample draws the same units for ``a`` and ``b``, so the
    variation the two share (hard windows are hard for both) cancels."""
    sums_a, sums_b, counts = _units(sums_a, sums_b, counts)

    def difference(a: np.ndarray, b: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
        return _rate(a - b, n, axis)

    return _bootstrap(difference, [sums_a, sums_b, counts], (sums_a - sums_b) / counts, confidence, resamples, seed)


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of a mean as lm-evaluation-harness reports ``<metric>_stderr``: the sample
    standard deviation (``n - 1``) over ``sqrt(n)``; for 0/1 scores ``sqrt(p (1 - p) / (n - 1))``.
    NaN for fewer than two values."""
    if len(values) < 2:
        return math.nan
    return statistics.stdev(values) / math.sqrt(len(values))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of a few independent repeats (training seeds) with Student's t interval,
    ``mean +- t(n - 1) sd / sqrt(n)``: with three seeds a bootstrap has too few units to resample,
    while t states exactly how little three repeats pin down. NaN bounds for fewer than two."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, math.nan, math.nan)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * mean_stderr(values)
    return Interval(mean, mean - half, mean + half)


def stderr_of_mean(stderrs: Sequence[float]) -> float:
    """Standard error of the unweighted mean of independent estimates with these standard
    errors (an average over tasks): ``sqrt(sum(se^2)) / count``."""
    return math.sqrt(math.fsum(se * se for se in stderrs)) / len(stderrs)


@dataclass(frozen=True)
class McNemar:
    """Two scorers' 0/1 results on the same items: the items only ``a`` got right, those only
    ``b`` did, the difference of their accuracies and the exact two-sided test's p-value."""

    a_only: int
    b_only: int
    difference: float
    p_value: float

    @property
    def direction(self) -> int:
        """+1 (``a`` better) or -1 when the test rejects equal accuracy at ``ALPHA``, else 0."""
        if self.p_value >= ALPHA:
            return 0
        return 1 if self.a_only > self.b_only else -1


def mcnemar(a: Sequence[int], b: Sequence[int]) -> McNemar:
    """Exact McNemar test of ``a`` against ``b`` (0/1 per item, the same items in the same order):
    under equal accuracy each discordant item is equally likely to favour either side, so the
    count favouring ``a`` is Binomial(discordant, 1/2)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"McNemar needs two equally long non-empty 0/1 sequences, got {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    p = scipy_stats.binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return McNemar(a_only, b_only, (a_only - b_only) / len(a), float(p))


def verdict(direction: int, higher_is_better: bool) -> str:
    """``better``/``worse`` for an established sign of ``a - b`` (+1 / -1), ``not distinguishable``
    for 0, read with the metric's better direction."""
    if direction == 0:
        return UNCLEAR
    return BETTER if (direction > 0) == higher_is_better else WORSE


def agreed(verdicts: Iterable[str]) -> str:
    """One verdict for several repeats of a comparison (calibration draws): theirs when they all
    agree, ``not distinguishable`` otherwise."""
    found = set(verdicts)
    return found.pop() if len(found) == 1 else UNCLEAR


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


def geomean_of_medians(ratios: Sequence[Sequence[float]], *, confidence: float = CONFIDENCE, resamples: int = 2000,
                       seed: int = 0) -> Interval:
    """The geometric mean over cases of each case's median ratio, with a seeded percentile
    bootstrap interval that resamples each case's rounds (paired dense / family ratios) on its
    own: the uncertainty of the timing, for this fixed set of cases. The cases are the
    question (which shapes and token counts), not a sample of one, so they are not resampled."""
    if not ratios or any(len(r) < 2 for r in ratios):
        raise ValueError("geomean_of_medians needs at least one case and two rounds per case")
    rng = np.random.default_rng(seed)
    logs = np.zeros(resamples)
    for case in ratios:
        values = np.asarray(case, dtype=np.float64)
        drawn = values[rng.integers(0, len(values), size=(resamples, len(values)))]
        logs += np.log(np.median(drawn, axis=1))
    estimate = math.exp(sum(math.log(statistics.median(case)) for case in ratios) / len(ratios))
    tail = (1 - confidence) / 2 * 100
    low, high = np.exp(np.percentile(logs / len(ratios), [tail, 100 - tail]))
    return Interval(estimate, float(low), float(high))


def weighted_median_ratio(cases: Sequence[tuple[float, Sequence[float], Sequence[float]]], *,
                          confidence: float = CONFIDENCE, resamples: int = 2000, seed: int = 0) -> Interval:
    """``sum(w * median(a)) / sum(w * median(b))`` over cases ``(w, a, b)`` whose samples ``a``
    and ``b`` were taken in paired rounds (``a[i]`` beside ``b[i]``), with a seeded percentile
    bootstrap that resamples each case's rounds on its own, pairs kept: e.g. a model's time in
    a family's linears over its time in dense ones, each shape weighted by how often the model
    has it."""
    if not cases or any(len(a) != len(b) or len(a) < 2 for _, a, b in cases):
        raise ValueError("weighted_median_ratio needs cases of two or more paired rounds")
    rng = np.random.default_rng(seed)
    top, bottom = np.zeros(resamples), np.zeros(resamples)
    for weight, a, b in cases:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        drawn = rng.integers(0, len(a), size=(resamples, len(a)))
        top += weight * np.median(a[drawn], axis=1)
        bottom += weight * np.median(b[drawn], axis=1)
    estimate = (sum(w * statistics.median(a) for w, a, _ in cases)
                / sum(w * statistics.median(b) for w, _, b in cases))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(top / bottom, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))
