"""Compare two kernels runs case by case: ratios of medians, flagged only beyond a factor
and when a rank test on the raw samples says the difference is not noise."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from structbench.results import RunData

MATCH_ON = ["family", "shape", "out_features", "in_features", "rho", "tokens", "mode", "dtype"]


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test, normal approximation with tie correction
    (samples here number in the tens to hundreds, where the approximation is good)."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    r1 = sum(r for r, (_, g) in zip(ranks, pooled) if g == 0)
    u = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return 1.0
    z = (abs(u - n1 * n2 / 2) - 0.5) / math.sqrt(var)
    return math.erfc(max(z, 0.0) / math.sqrt(2))


def compare_runs(a: RunData, b: RunData, threshold: float = 1.1, alpha: float = 0.01) -> pd.DataFrame:
    """One row per case present in both runs: ``ratio = B median / A median`` and a flag
    (``slower`` / ``faster``) when the ratio leaves ``[1/threshold, threshold]`` and the
    samples differ significantly (p < ``alpha``)."""
    fa, fb = a.frame(), b.frame()
    for frame in (fa, fb):
        if "median_s" not in frame:
            frame["median_s"] = float("nan")
    fa, fb = (f[f.get("status", "ok") == "ok"] for f in (fa, fb))
    keys = [k for k in MATCH_ON if k in fa.columns and k in fb.columns]
    merged = fa.merge(fb, on=keys, suffixes=("_a", "_b"))
    rows: list[dict[str, Any]] = []
    for _, r in merged.iterrows():
        ratio = r["median_s_b"] / r["median_s_a"]
        p = mann_whitney_p(list(r.get("samples_s_a") or []), list(r.get("samples_s_b") or []))
        flag = ""
        if p < alpha and ratio > threshold:
            flag = "slower"
        elif p < alpha and ratio < 1 / threshold:
            flag = "faster"
        rows.append({**{k: r[k] for k in keys}, "median_a_s": r["median_s_a"], "median_b_s": r["median_s_b"],
                     "ratio": ratio, "p_value": p, "flag": flag})
    return pd.DataFrame(rows)
