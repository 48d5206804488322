"""structbench.stats: intervals that cover a known answer, the McNemar test against a hand-worked
case, lm-eval's standard error, and the verdict rules."""
from __future__ import annotations

import math

import numpy as np
import pytest

from structbench import stats


def _windows(rng: np.random.Generator, reps: int, n: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """``reps`` synthetic evaluations of ``n`` windows: uneven token counts, each window's mean
    loss skewed (gamma) around ``rate``, so the true rate is exactly ``rate``."""
    counts = rng.integers(300, 513, size=(reps, n)).astype(float)
    per_token = rng.gamma(shape=25.0, scale=rate / 25.0, size=(reps, n))  # sd 0.6 nats at rate 3
    return per_token * counts, counts


@pytest.mark.slow  # a coverage simulation: thousands of intervals
def test_rate_interval_covers_the_true_rate_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    sums, counts = _windows(rng, reps=400, n=64, rate=3.0)
    interval = stats.rate_interval(sums, counts, resamples=999, seed=1)  # 400 evaluations at once
    np.testing.assert_allclose(interval.estimate, sums.sum(-1) / counts.sum(-1))
    covered = float(np.mean((interval.low <= 3.0) & (3.0 <= interval.high)))
    assert 0.91 <= covered <= 0.975, covered  # binomial sd over 400 repetitions: 0.011
    width = float(np.mean(interval.high - interval.low))
    # a normal-theory interval of the mean window loss is about 2 * 1.96 * 0.6 / sqrt(64) wide
    assert 0.2 < width < 0.4, width


@pytest.mark.slow  # a coverage simulation
def test_paired_difference_covers_the_true_shift_and_is_narrower_than_unpaired() -> None:
    rng = np.random.default_rng(2)
    base, counts = _windows(rng, reps=300, n=64, rate=3.0)
    shifted = base + rng.normal(0.05, 0.1, size=base.shape) * counts  # b is 0.05 nats per token worse
    paired = stats.paired_rate_difference(shifted, base, counts, resamples=999, seed=3)
    covered = float(np.mean((paired.low <= 0.05) & (0.05 <= paired.high)))
    assert 0.92 <= covered <= 0.98, covered
    # the windows' shared difficulty cancels: far narrower than either rate's own interval
    alone = stats.rate_interval(base, counts, resamples=999, seed=3)
    assert float(np.mean(paired.high - paired.low)) < 0.3 * float(np.mean(alone.high - alone.low))


def test_paired_difference_sign_follows_which_side_is_worse() -> None:
    rng = np.random.default_rng(4)
    base, counts = _windows(rng, reps=1, n=40, rate=3.0)
    worse = base + 0.05 * counts + rng.normal(0, 0.02, size=base.shape) * counts
    up = stats.paired_rate_difference(worse[0], base[0], counts[0])
    down = stats.paired_rate_difference(base[0], worse[0], counts[0])
    assert up.side() == 1 and down.side() == -1 and up.estimate == pytest.approx(-down.estimate)
    assert stats.verdict(up.side(), higher_is_better=False) == stats.WORSE
    assert stats.verdict(down.side(), higher_is_better=False) == stats.BETTER
    noise = base[0] + rng.normal(0, 0.02, size=base.shape[1]) * counts[0]  # no shift: the interval holds 0
    assert stats.paired_rate_difference(noise, base[0], counts[0]).side() == 0
    same = stats.paired_rate_difference(base[0], base[0], counts[0])  # identical models: a point at 0
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)


def test_intervals_refuse_one_unit_and_mismatched_pairs() -> None:
    with pytest.raises(ValueError, match="two units"):
        stats.rate_interval([3.0], [1.0])
    with pytest.raises(ValueError, match="one shape"):
        stats.paired_rate_difference([1.0, 2.0], [1.0, 2.0, 3.0], [1.0, 1.0])


def test_mcnemar_matches_a_hand_worked_case() -> None:
    # 20 items: both right on 8, both wrong on 2, only a right on 8, only b right on 2.
    a = [1] * 8 + [0] * 2 + [1] * 8 + [0] * 2
    b = [1] * 8 + [0] * 2 + [0] * 8 + [1] * 2
    test = stats.mcnemar(a, b)
    # exact two-sided: P(X <= 2) + P(X >= 8) for X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert (test.a_only, test.b_only) == (8, 2)
    assert test.p_value == pytest.approx(112 / 1024)
    assert test.difference == pytest.approx(6 / 20) and test.direction == 0  # p = 0.109: not at 5 %
    stronger = stats.mcnemar(a + [1] * 4, b + [0] * 4)  # 12 against 2: 2 * (1 + 14 + 91) / 16384
    assert stronger.p_value == pytest.approx(212 / 16384) and stronger.direction == 1
    assert stats.mcnemar(b + [0] * 4, a + [1] * 4).direction == -1
    assert stats.mcnemar([1, 0, 1], [1, 0, 1]).p_value == 1.0  # no discordant item
    with pytest.raises(ValueError):
        stats.mcnemar([1, 0], [1])


def test_mean_stderr_is_lm_evals() -> None:
    correct = [1] * 30 + [0] * 70
    assert stats.mean_stderr(correct) == pytest.approx(math.sqrt(0.3 * 0.7 / 99))
    assert math.isnan(stats.mean_stderr([1]))
    assert stats.stderr_of_mean([0.03, 0.04]) == pytest.approx(0.025)


def test_agreed_verdict_needs_every_repeat() -> None:
    assert stats.agreed([stats.BETTER, stats.BETTER]) == stats.BETTER
    assert stats.agreed([stats.BETTER, stats.UNCLEAR]) == stats.UNCLEAR
    assert stats.agreed([stats.BETTER, stats.WORSE]) == stats.UNCLEAR
    assert stats.verdict(1, higher_is_better=True) == stats.BETTER and stats.verdict(0, True) == stats.UNCLEAR


def test_median_interval_is_the_order_statistics_a_binomial_table_gives() -> None:
    # n = 10 at 95 %: P(Bin(10, 1/2) <= 1) = 0.0107 per side, so (x_(2), x_(9)); x_(3) would cover only 0.89
    assert stats.median_interval(list(range(10))) == (1, 8)
    assert stats.median_interval([5.0, 1.0, 3.0]) == (1.0, 5.0)  # too few samples for 95 %: the full range
    assert stats.median_interval([2.0]) == (2.0, 2.0)


def test_median_interval_covers_the_true_median_at_least_95_percent_on_skewed_data() -> None:
    rng = np.random.default_rng(7)
    draws = rng.lognormal(mean=0.0, sigma=1.0, size=(400, 15))  # true median exp(0) = 1
    hits = sum(lo <= 1.0 <= hi for lo, hi in map(stats.median_interval, draws))
    assert 0.93 <= hits / 400 <= 0.995
    assert stats.median_interval(list(draws[0]), confidence=0.5) != stats.median_interval(list(draws[0]))
    with pytest.raises(IndexError):
        stats.median_interval([])


def test_geomean_of_medians_is_exact_without_noise_and_refuses_a_single_round() -> None:
    got = stats.geomean_of_medians([[2.0] * 6, [8.0] * 6])
    assert got.estimate == pytest.approx(4.0) and got.low == pytest.approx(4.0) and got.high == pytest.approx(4.0)
    with pytest.raises(ValueError):
        stats.geomean_of_medians([[2.0]])


def test_geomean_of_medians_covers_the_true_geomean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    medians = np.array([0.5, 1.0, 3.0, 7.0])  # each case's true median ratio
    truth = math.exp(np.log(medians).mean())
    # the sample median of 20 lognormal(0, 0.2) rounds has sd ~1.2533 * 0.2 / sqrt(20); 4 cases average
    normal_half_width = 1.96 * 1.2533 * 0.2 / math.sqrt(20) / math.sqrt(len(medians))
    hits, half_widths = 0, []
    for trial in range(200):
        ratios = [m * np.exp(rng.normal(0.0, 0.2, size=20)) for m in medians]  # lognormal: median m
        got = stats.geomean_of_medians(ratios, seed=trial)
        assert got.low <= got.estimate <= got.high
        hits += got.low <= truth <= got.high
        half_widths.append(math.log(got.high / got.low) / 2)
    assert hits / 200 >= 0.9  # a median's bootstrap is discrete and errs wide, never narrow
    assert np.mean(half_widths) < 1.5 * normal_half_width  # ... but not uselessly wide


def test_weighted_median_ratio_weights_each_case_and_covers_the_truth() -> None:
    exact = stats.weighted_median_ratio([(2, [3.0] * 5, [1.0] * 5), (1, [1.0] * 5, [2.0] * 5)])
    assert exact.estimate == pytest.approx((2 * 3 + 1) / (2 * 1 + 2)) and exact.low == exact.high == pytest.approx(7 / 4)
    with pytest.raises(ValueError):
        stats.weighted_median_ratio([(1, [1.0, 2.0], [1.0])])
    rng = np.random.default_rng(2)
    truth = (2 * 3.0 + 1 * 0.5) / (2 * 1.0 + 1 * 1.0)
    hits = 0
    for trial in range(200):
        cases = [(2, 3.0 * np.exp(rng.normal(0, 0.2, 20)), np.exp(rng.normal(0, 0.2, 20))),
                 (1, 0.5 * np.exp(rng.normal(0, 0.2, 20)), np.exp(rng.normal(0, 0.2, 20)))]
        got = stats.weighted_median_ratio(cases, seed=trial)
        hits += got.low <= truth <= got.high
    assert hits / 200 >= 0.9
