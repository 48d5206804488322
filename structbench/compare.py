"""Compare two runs of one suite case by case on the suite's headline metrics: ratios, flagged
only beyond a factor and, where the rows carry raw samples, when a rank test says the
difference is not noise.

What to match rows on, which metrics to compare and where their samples are come from the
``Schema`` stored in the runs, so this works for every suite that declares numeric
headline metrics.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd
from scipy.stats import mannwhitneyu

from structbench.errors import StructbenchError
from structbench.results import RunData


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test: exact when no value ties (the null
    distribution of U is enumerated, right for the 6-20 timing rounds runs use), else the
    normal approximation with tie and continuity corrections, since the exact distribution
    assumes distinct values. No samples, or all samples equal: 1 (no evidence)."""
    if not a or not b or len(set(a) | set(b)) == 1:
        return 1.0
    tied = len(set(a) | set(b)) < len(a) + len(b)
    return float(mannwhitneyu(a, b, alternative="two-sided", method="asymptotic" if tied else "exact").pvalue)


def _flag(ratio: float, p: float, threshold: float, alpha: float, metric: dict[str, Any]) -> str:
    if math.isnan(ratio) or p >= alpha or 1 / threshold <= ratio <= threshold:
        return ""
    up = ratio > threshold
    if metric.get("unit") == "s":
        return "slower" if up else "faster"
    better = metric.get("higher_is_better")
    if better is None:
        return "higher" if up else "lower"
    return "better" if up == better else "worse"


def compared_metrics(a: RunData, b: RunData, force: bool = False) -> list[str]:
    """The headline metrics both runs hold as numbers; refuses runs it cannot compare, and
    runs marked unreliable unless ``force``."""
    for run in (a, b):
        reliability = run.meta.get("reliability") or {}
        if reliability.get("unreliable") and not force:
            raise StructbenchError(f"compare: {run.run_dir} is marked unreliable ({'; '.join(reliability['reasons'])}); "
                                   "re-run it on an idle machine, or pass --force to compare anyway")
    if a.suite != b.suite:
        raise StructbenchError(f"compare: {a.run_dir} is a {a.suite} run and {b.run_dir} a {b.suite} run; "
                               "compare two runs of one suite")
    headline = a.schema.get("headline") or b.schema.get("headline")
    if not headline:
        raise StructbenchError(f"compare: the {a.suite} runs declare no headline metrics (runs of schema_version "
                               f">= 2 do); nothing to compare")
    fa, fb = a.frame(), b.frame()
    numeric = [m for m in headline if m in fa and m in fb
               and pd.api.types.is_numeric_dtype(fa[m]) and pd.api.types.is_numeric_dtype(fb[m])]
    if not numeric:
        raise StructbenchError(f"compare: no headline metric of {a.suite} ({', '.join(headline)}) is numeric in both runs")
    return numeric


def compare_runs(a: RunData, b: RunData, threshold: float = 1.1, alpha: float = 0.01, force: bool = False) -> pd.DataFrame:
    """One row per (case in both runs, headline metric): ``ratio = B / A`` and a flag when the
    ratio leaves ``[1/threshold, threshold]`` and, if the metric has raw samples, they differ
    significantly (p < ``alpha``); without samples ``p_value`` is NaN and the ratio decides."""
    metrics = compared_metrics(a, b, force)
    schema = a.schema or b.schema
    samples = schema.get("samples", {})
    fa, fb = (f[f["status"] == "ok"] if "status" in f else f for f in (a.frame(), b.frame()))
    wanted = schema.get("compare_on") or schema.get("case_keys") or []
    keys = [k for k in wanted if k in fa.columns and k in fb.columns]
    if not keys:
        raise StructbenchError(f"compare: the runs share none of the fields {a.suite} cases are matched on ({wanted})")
    merged = fa.merge(fb, on=keys, suffixes=("_a", "_b"))
    meta = a.meta.get("metrics", {})
    rows: list[dict[str, Any]] = []
    for _, r in merged.iterrows():
        for metric in metrics:
            va, vb = float(r[f"{metric}_a"]), float(r[f"{metric}_b"])
            ratio = vb / va if va else float("nan")
            column = samples.get(metric)
            p = (mann_whitney_p(list(r.get(f"{column}_a") or []), list(r.get(f"{column}_b") or []))
                 if column else float("nan"))
            flag = _flag(ratio, 0.0 if math.isnan(p) else p, threshold, alpha, meta.get(metric, {}))
            rows.append({**{k: r[k] for k in keys}, "metric": metric, "a": va, "b": vb, "ratio": ratio,
                         "p_value": p, "flag": flag})
    return pd.DataFrame(rows)
