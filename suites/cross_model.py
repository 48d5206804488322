"""The cross-model page: does a ranking of structures found on one model hold on another?

A ranking that holds on one small model is an anecdote. This page sets the llama-compress
reference runs of different models (SmolLM2-135M, Gemma3-270M: each model's newest reference
run, ``results.reference_runs``) side by side, from stored rows only. For every compression
ratio, objective and re-training that both runs hold:

* each family's perplexity and its rank on each model (1 = lowest perplexity; a calibrated
  model's perplexity is the mean over its calibration draws);
* Kendall's tau between the two rankings with its p-value (``scipy.stats.kendalltau``);
* every pair of families judged by each run's own paired verdicts (the perplexity ratio's
  paired bootstrap interval over the same windows, ``suites.llama_compress.report``): an
  ordering **holds** when both models call it the same way, **flips** when both call it and
  disagree, and is **unsettled** when either model cannot tell the two apart, so a flip inside
  the noise is never called a flip.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats as scipy_stats

from structbench.report.html import PLOTLY_FILE, Link, Section, report_href, render_page
from structbench.results import RunData, reference_runs, rows_made_at, shown_status
from structbench.stats import BETTER, UNCLEAR, WORSE
from suites.llama_compress.report import case_means, ordered, verdict_table

PAGE = "cross-model.html"
SUITE = "llama-compress"
GROUP = ["CR %", "objective", "re-trained"]
"""What makes two models' rows comparable: the same budget, objective and re-training."""
HOLDS, FLIPS, UNSETTLED = "holds", "flips", "unsettled"


def runs_by_model(results: Path) -> dict[str, RunData]:
    """The newest llama-compress reference run of each model its config names; the suite's
    default config first, then the others by config name."""
    found: dict[str, RunData] = {}
    for _, run in sorted(reference_runs(results).items()):
        if run.suite == SUITE:
            found.setdefault(str((run.meta.get("config") or {}).get("model")), run)
    return found


def _ok(run: RunData) -> pd.DataFrame:
    frame = run.frame()
    return ordered(frame[frame["status"] == "ok"]) if "status" in frame and "perplexity" in frame else pd.DataFrame()


def _label(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(**{"CR %": ((1 - frame["rho"].astype(float)) * 100).round().astype(int),
                           "re-trained": frame["retrained"].map(lambda v: "yes" if v else "no")})


def scores(run: RunData) -> pd.DataFrame:
    """Each compressed model's perplexity (the mean over its draws) and its rank among the
    families at the same CR, objective and re-training."""
    ok = _ok(run)
    if ok.empty:
        return pd.DataFrame()
    means = _label(case_means(ok))
    means = means[means["family"] != "dense"][["family", *GROUP, "perplexity"]]
    return means.assign(rank=means.groupby(GROUP)["perplexity"].rank(method="min").astype(int))


def pair_verdicts(run: RunData) -> dict[tuple[Any, ...], str]:
    """``(CR %, objective, re-trained, a, b) -> a's perplexity verdict against b`` for every pair
    of families the run compared, in both orders."""
    ok = _ok(run)
    verdicts = verdict_table(ok, int(run.meta.get("seed") or 0)) if not ok.empty else pd.DataFrame()
    found: dict[tuple[Any, ...], str] = {}
    mirror = {BETTER: WORSE, WORSE: BETTER, UNCLEAR: UNCLEAR}
    for line in verdicts.to_dict("records") if not verdicts.empty else []:
        if line["against"] == "dense":
            continue
        group = tuple(line[k] for k in GROUP)
        found[(*group, line["family"], line["against"])] = line["perplexity"]
        found[(*group, line["against"], line["family"])] = mirror.get(line["perplexity"], UNCLEAR)
    return found


def ordering(first: str, second: str) -> str:
    """Whether an ordering of two families holds across two models, given each model's verdict."""
    if UNCLEAR in (first, second) or not first or not second:
        return UNSETTLED
    return HOLDS if first == second else FLIPS


def compare(a: RunData, b: RunData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(summary, pairs)`` of two models' runs: per CR, objective and re-training the families
    both ran, Kendall's tau of their perplexity ranks with its p-value and how many orderings
    hold, flip or stay unsettled; and every pair of families with each model's verdict."""
    sa, sb = scores(a), scores(b)
    if sa.empty or sb.empty:
        return pd.DataFrame(), pd.DataFrame()
    va, vb = pair_verdicts(a), pair_verdicts(b)
    both = sa.merge(sb, on=["family", *GROUP], suffixes=(" a", " b"))
    summary, pairs = [], []
    for group, part in both.groupby(GROUP, sort=False):
        if len(part) < 2:
            continue
        tau = scipy_stats.kendalltau(part["perplexity a"], part["perplexity b"])
        outcomes = []
        for f, g in itertools.combinations(part["family"], 2):
            first, second = va.get((*group, f, g), ""), vb.get((*group, f, g), "")
            outcome = ordering(first, second)
            outcomes.append(outcome)
            pairs.append({**dict(zip(GROUP, group)), "family": f, "against": g, "on a": first or "-",
                          "on b": second or "-", "ordering": outcome})
        flips = [f"{p['family']} vs {p['against']}" for p in pairs[-len(outcomes):] if p["ordering"] == FLIPS]
        summary.append({**dict(zip(GROUP, group)), "families": len(part), "kendall tau": float(tau.statistic),
                        "p": float(tau.pvalue), HOLDS: outcomes.count(HOLDS), FLIPS: outcomes.count(FLIPS),
                        UNSETTLED: outcomes.count(UNSETTLED), "flipped pairs": ", ".join(flips)})
    return pd.DataFrame(summary), pd.DataFrame(pairs)


def statement(summary: pd.DataFrame, names: tuple[str, str]) -> str:
    """The plain sentence a reader takes away: how many orderings hold and flip over all groups."""
    if summary.empty:
        return f"{names[0]} and {names[1]} share no compressed models with ok rows yet."
    holds, flips, open_ = (int(summary[k].sum()) for k in (HOLDS, FLIPS, UNSETTLED))
    total = holds + flips + open_
    flipped = "; ".join(f"CR {r['CR %']} % {r['objective']}{' re-trained' if r['re-trained'] == 'yes' else ''}: "
                        f"{r['flipped pairs']}" for r in summary.to_dict("records") if r["flipped pairs"])
    return (f"Of {total} orderings of two families (at the same CR, objective and re-training), {holds} hold on both "
            f"{names[0]} and {names[1]}, {flips} flip and {open_} are inside the noise on at least one model."
            + (f" Flips: {flipped}." if flipped else ""))


def page_sections(runs: dict[str, RunData], page_dir: Path) -> list[Section]:
    read = pd.DataFrame([{"model": model, "run": Link(run.run_dir.name, report_href(run, page_dir)),
                          "status": shown_status(run), "commits": ", ".join(rows_made_at(run)),
                          "machine": (run.meta.get("env") or {}).get("device_name")} for model, run in runs.items()])
    sections = [Section("Reference runs read", "The newest llama-compress reference run of each model.",
                        tables=[read] if not read.empty else [])]
    if len(runs) < 2:
        sections.append(Section("Not yet comparable", "A comparison needs the llama-compress reference runs of two "
                                "models; " + (f"only {next(iter(runs))}'s is stored." if runs else "none is stored.")))
        return sections
    for (name_a, a), (name_b, b) in itertools.combinations(runs.items(), 2):
        summary, pairs = compare(a, b)
        ranks = scores(a).merge(scores(b), on=["family", *GROUP], how="outer", suffixes=(f" {name_a}", f" {name_b}"))
        sections.append(Section(
            f"{name_a} (a) against {name_b} (b)", statement(summary, (name_a, name_b)),
            tables=[t for t in (summary, ranks, pairs) if not t.empty]))
    return sections


def write_page(results: Path) -> Path:
    """``<results>/cross-model.html`` from the llama-compress reference runs of every model."""
    runs = runs_by_model(results)
    header = ("<p class='note'>Does a ranking of structures found on one model hold on another? Each family's "
              "perplexity rank on each model, Kendall's tau between the rankings, and every ordering of two families "
              "judged by each model's paired verdicts: it holds, flips, or is inside the noise on one of them.</p>")
    out = results / PAGE
    out.write_text(render_page("Across models", header, page_sections(runs, results), PLOTLY_FILE,
                               index_href="index.html"))
    return out
