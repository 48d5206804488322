"""The "which structure" page: every registered family across every suite's newest reference
run, from stored rows only, so a reader sees in one place what a structure costs (CPU latency
at a real model's linear shapes, MACs, bytes) and what it keeps (perplexity and accuracy of the
compressed model, approximation error of its layers, accuracy when trained from scratch).

Families are compared at matched budgets: the same kept fraction ``rho`` in every suite. Each
figure marks the dense point, draws each family's Pareto front and the front over all of them,
and a click on a point opens the report of the run it comes from. A suite without a reference
run, or a family a run did not cover, is said so, never left out silently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from structbench.families import list_families
from structbench.report.html import PLOTLY_FILE, Link, Section, report_href, reliability_text, render_page
from structbench.report.plots import family_rank, lines_by_family, scatter_by_family
from structbench.report.training import by_budget, trained_runs
from structbench.results import REFERENCE, RunData, reference_runs, rows_made_at, shown_status
from structbench.stats import mean_stderr, weighted_median_ratio
from suites.llama_compress.report import case_means, ordered
from suites.train_scaling.report import summary as compute_matched

PAGE = "which-structure.html"
SUITE_ORDER = ("kernels", "llama-compress", "approx", "train-vision", "train-lm", "train-scaling")

MODEL_LINEARS: dict[str, dict[str, int]] = {
    "smollm2": {"smollm2-q": 2, "smollm2-kv": 2, "smollm2-up": 2, "smollm2-down": 1},
    "gemma3": {"gemma3-q": 1, "gemma3-kv": 2, "gemma3-o": 1, "gemma3-up": 2, "gemma3-down": 1},
}
"""Kernels shapes of one decoder layer's linears and how many of each it has (SmolLM2-135M:
q and o are 576x576, k and v 192x576, gate and up 1536x576; Gemma3-270M: k and v 256x640,
gate and up 2048x640), so a model's latency weights each shape as the model does."""

PREFILL_TOKENS, DECODE_TOKENS = 128, 1


def _ok(run: RunData) -> pd.DataFrame:
    frame = run.frame()
    return frame[frame["status"] == "ok"].copy() if "status" in frame else frame


def model_of(name: Any) -> str | None:
    """The ``MODEL_LINEARS`` key a llama-compress model name belongs to, if any."""
    text = str(name).lower()
    return next((key for key in MODEL_LINEARS if key in text), None)


# ---- kernels: a model's time in its linears -------------------------------------------------
def model_latency(run: RunData, tokens: int) -> pd.DataFrame:
    """Per model, family and rho (eager mode): the time of one decoder layer's linears at
    ``tokens`` tokens over the same linears as ``nn.Linear``, each shape weighted by its count
    in the layer, with a 95 % interval from resampling every shape's paired rounds
    (``weighted_median_ratio``). Below 1 is faster than dense. A (family, rho) that missed a
    shape (skipped there) gets no figure for that model."""
    ok = _ok(run)
    if ok.empty or "samples_s" not in ok:
        return pd.DataFrame()
    ok = ok[(ok["tokens"] == tokens) & (ok["mode"] == "eager")]
    lines = []
    for model, counts in MODEL_LINEARS.items():
        part = ok[ok["shape"].isin(counts)]
        for (family, rho), rows in part.groupby(["family", "rho"], sort=False):
            if set(rows["shape"]) != set(counts):
                continue
            ratio = weighted_median_ratio([(counts[r["shape"]], r["samples_s"], r["dense_samples_s"])
                                           for r in rows.to_dict("records")])
            lines.append({"model": model, "family": family, "rho": float(rho), "tokens": tokens,
                          "latency": ratio.estimate, "latency_low": ratio.low, "latency_high": ratio.high,
                          "noisy_shapes": int(rows["noisy"].fillna(False).astype(bool).sum())})
    return pd.DataFrame(lines)


def _kernels_section(run: RunData, href: str) -> Section:
    prefill, decode = model_latency(run, PREFILL_TOKENS), model_latency(run, DECODE_TOKENS)
    if prefill.empty:
        return Section("CPU latency at real models' linear shapes",
                       "The kernels reference run holds none of the models' shapes at 128 tokens.")
    table = prefill.merge(decode[["model", "family", "rho", "latency", "latency_low", "latency_high"]],
                          on=["model", "family", "rho"], how="left", suffixes=("", " @1 token"))
    table = table.rename(columns={"latency": f"latency @{PREFILL_TOKENS} tokens",
                                  "latency_low": f"latency_low @{PREFILL_TOKENS} tokens",
                                  "latency_high": f"latency_high @{PREFILL_TOKENS} tokens"})
    prefill = prefill.assign(link=href)
    figures = [lines_by_family(prefill[prefill["model"] == model].sort_values("rho"), "rho", "latency",
                               band=("latency_low", "latency_high"), reference=1.0, log_y=True, link="link",
                               title=f"{model}: one decoder layer's linears, {PREFILL_TOKENS} tokens",
                               x_title="kept fraction rho", y_title="time / dense nn.Linear's (log; lower is faster)")
               for model in prefill["model"].unique()]
    return Section(
        "CPU latency at real models' linear shapes",
        f"From the kernels reference run ({reliability_text(run)}): the time of one decoder layer's linear "
        f"projections (SmolLM2-135M: q, k, v, o, gate, up, down; Gemma3-270M likewise at its shapes), each shape "
        f"weighted by its count, over the same projections as nn.Linear, at {PREFILL_TOKENS} tokens (a prompt) and "
        f"at 1 token (a decode step), with a 95% interval from resampling each shape's timed rounds. The dense "
        f"family's value is the module's own call overhead. Lower is faster; dotted: dense.",
        figures=figures, tables=[table.sort_values(["model", "rho", "family"], key=_family_key)])


def _family_key(column: pd.Series) -> pd.Series:
    return column.map(lambda f: family_rank(f)[0]) if column.name == "family" else column


# ---- llama-compress: quality against cost ---------------------------------------------------
def compressed_models(run: RunData) -> pd.DataFrame:
    """One row per compressed model (calibrated ones: the means over their draws) with the
    fields the page shows."""
    ok = _ok(run)
    if ok.empty or "perplexity" not in ok:
        return pd.DataFrame()
    means = case_means(ordered(ok))
    keep = [c for c in ("family", "rho", "objective", "retrained", "cr", "cr_model", "perplexity", "ppl_low",
                        "ppl_high", "acc_avg", "acc_avg_stderr", "bytes", "macs_per_token") if c in means]
    return means[keep].assign(rho=means["rho"].astype(float), model=model_of((run.meta.get("config") or {}).get("model")))


def _llama_section(run: RunData, kernels: RunData | None, page_dir: Path) -> Section:
    models = compressed_models(run)
    if models.empty:
        return Section("Compressed model quality", "The llama-compress reference run has no ok rows yet.")
    model = models["model"].iloc[0]
    latency = model_latency(kernels, PREFILL_TOKENS) if kernels is not None else pd.DataFrame()
    if not latency.empty and model is not None:
        latency = latency[latency["model"] == model].drop(columns=["model", "tokens"])
        models = models.merge(latency, on=["family", "rho"], how="left")
    models = models.assign(link=report_href(run, page_dir),
                           label=models["family"] + " rho=" + models["rho"].map("{:g}".format))
    figures = []
    band = ("ppl_low", "ppl_high") if {"ppl_low", "ppl_high"} <= set(models) else None
    timed = models.dropna(subset=["latency"]) if "latency" in models else models.iloc[0:0]
    for (objective, retrained), part in models[models["family"] != "dense"].groupby(["objective", "retrained"]):
        dense = models[(models["family"] == "dense") & (models["retrained"] == retrained)]
        part = pd.concat([dense, part])
        suffix = f"{objective}{', re-trained' if retrained else ''}"
        figures.append(scatter_by_family(part, "bytes", "perplexity", text="label", link="link",
                                         y_band=band, log_y=True, pareto=True,
                                         overall_front=True, higher_is_better=False,
                                         title=f"perplexity vs weight bytes ({suffix})",
                                         x_title="bytes of the model's weights", y_title="perplexity (log)"))
        both = timed[timed["family"].isin(part["family"]) & (timed["objective"].isin([objective, "none"]))
                     & (timed["retrained"] == retrained)]
        if len(both) > 1:
            figures.append(scatter_by_family(both, "latency", "perplexity", text="label", link="link",
                                             x_band=("latency_low", "latency_high"), y_band=band,
                                             log_y=True, pareto=True, overall_front=True, higher_is_better=False,
                                             title=f"perplexity vs CPU latency of the linears ({suffix})",
                                             x_title=f"time of a layer's linears / dense's, {PREFILL_TOKENS} tokens",
                                             y_title="perplexity (log)"))
    rhos_timed = sorted(set(timed["rho"])) if not timed.empty else []
    overlap = (f"The kernels run timed rho {', '.join(f'{r:g}' for r in rhos_timed)} of these; the other budgets have "
               f"no latency here." if rhos_timed else "No kernels reference run covers this model's shapes at these "
               "budgets, so no latency is shown.")
    return Section(
        "Compressed model quality against its cost",
        f"From the llama-compress reference run ({shown_status(run)}, model {model or 'unknown'}): perplexity with "
        f"its 95% interval and average zero-shot accuracy ± lm-eval's standard error (calibrated models: means over "
        f"their draws), against the weights' bytes and, at matched rho, the CPU latency of one decoder layer's "
        f"linears from the kernels run. {overlap} Solid black: the Pareto front over every family.",
        figures=figures, tables=[models.drop(columns=["link", "label"])])


# ---- approx: how well each family approximates real layers ---------------------------------
def layer_errors(run: RunData) -> pd.DataFrame:
    """Per family, rho and objective: the mean error over a real model's layers and its
    standard error (frobenius: relative Frobenius error; calibrated: the activation-weighted
    error it minimised)."""
    ok = _ok(run)
    if ok.empty or "source" not in ok:
        return pd.DataFrame()
    real = ok[ok["source"] != "synthetic"]
    if "experiment" in real:
        real = real[real["experiment"] == "projection"]
    if real.empty:
        return pd.DataFrame()
    real = real.assign(objective=real["objective"].fillna("frobenius") if "objective" in real else "frobenius")
    lines = []
    for (source, family, rho, objective), rows in real.groupby(["source", "family", "rho", "objective"], sort=False):
        column = "weighted_error" if objective == "calibrated" and "weighted_error" in rows else "rel_error"
        values = rows[column].dropna().astype(float).tolist()
        if not values:
            continue
        mean, stderr = sum(values) / len(values), mean_stderr(values)
        spread = 0.0 if pd.isna(stderr) else stderr
        lines.append({"source": source, "family": family, "rho": float(rho), "objective": objective,
                      "error": column, "mean": mean, "stderr": stderr, "layers": len(values),
                      "low": mean - 1.96 * spread, "high": mean + 1.96 * spread})
    return pd.DataFrame(lines)


def _approx_section(run: RunData, page_dir: Path) -> Section:
    errors = layer_errors(run)
    if errors.empty:
        return Section("Approximation error of real layers", "The approx reference run holds no real-layer rows.")
    errors = errors.assign(link=report_href(run, page_dir))
    figures = [lines_by_family(part, "rho", "mean", band=("low", "high"), link="link",
                               title=f"{source}: {objective} error",
                               x_title="kept fraction rho", y_title=f"mean {part['error'].iloc[0]} over layers")
               for (source, objective), part in errors.groupby(["source", "objective"], sort=False)]
    return Section(
        "Approximation error of real layers",
        f"From the approx reference run ({shown_status(run)}): each family's projection of every real layer, the mean "
        "error over the layers with a band of 1.96 standard errors (frobenius: ||W - What||_F / ||W||_F; calibrated: "
        "the error on calibration inputs it minimised). Lower is better.",
        figures=figures, tables=[errors.drop(columns=["low", "high", "link"])])


# ---- training from scratch ------------------------------------------------------------------
def _training_section(run: RunData, page_dir: Path) -> Section:
    headline = run.schema.get("headline") or []
    ok = trained_runs(run)
    if ok.empty or not headline:
        return Section(f"{run.suite}: trained from scratch", "The reference run has no ok rows yet.")
    score = headline[0]
    higher = bool((run.meta.get("metrics") or {}).get(score, {}).get("higher_is_better"))
    budgets = by_budget(ok, score).assign(link=report_href(run, page_dir))
    seeds = int(budgets["seeds"].max())
    spread = (f"mean over {seeds} seeds, error bars one standard deviation" if seeds > 1
              else "one seed per point: no interval")
    figure = scatter_by_family(budgets, "model_macs_ratio", score, text="label", link="link", y_band=("low", "high"),
                               pareto=True, overall_front=True, higher_is_better=higher,
                               title=f"{run.suite}: {score} vs whole-model MACs / dense",
                               x_title="whole-model MACs / dense model's", y_title=score)
    return Section(
        f"{run.suite}: trained from scratch",
        f"From the {run.suite} reference run ({shown_status(run)}): {score} ({spread}) against the whole model's "
        f"MACs relative to dense; {'higher' if higher else 'lower'} is better; solid black: the Pareto front over "
        "every family.",
        figures=[figure], tables=[budgets.drop(columns=["link", "label", "low", "high"])])


# ---- the page -------------------------------------------------------------------------------
def _cell(value: float, low: float | None = None, high: float | None = None, *, pm: float | None = None) -> str:
    if pd.isna(value):
        return ""
    if pm is not None and pd.notna(pm):
        return f"{value:.4g} ± {pm:.2g}"
    if low is not None and high is not None and pd.notna(low) and pd.notna(high):
        return f"{value:.4g} [{low:.4g}, {high:.4g}]"
    return f"{value:.4g}"


def at_a_glance(runs: dict[str, RunData]) -> pd.DataFrame:
    """One line per (family, rho) any suite measured, one column per figure of merit, each
    with its interval; empty where that suite did not measure the budget (their rho grids
    differ, see each section)."""
    columns: dict[str, dict[tuple[str, float], str]] = {}
    if "kernels" in runs:
        for row in model_latency(runs["kernels"], PREFILL_TOKENS).to_dict("records"):
            columns.setdefault(f"{row['model']} linears time / dense ({PREFILL_TOKENS} tokens)", {})[
                (row["family"], row["rho"])] = _cell(row["latency"], row["latency_low"], row["latency_high"])
    if "llama-compress" in runs:
        models = compressed_models(runs["llama-compress"])
        if not models.empty:
            chosen = models[~models["retrained"].astype(bool) & models["objective"].isin(["calibrated", "none"])]
            for row in chosen.to_dict("records"):
                key = (row["family"], row["rho"])
                columns.setdefault("perplexity (calibrated)", {})[key] = _cell(row["perplexity"], row.get("ppl_low"),
                                                                               row.get("ppl_high"))
                columns.setdefault("accuracy (calibrated)", {})[key] = _cell(row["acc_avg"], pm=row.get("acc_avg_stderr"))
    if "approx" in runs:
        for row in layer_errors(runs["approx"]).to_dict("records"):
            columns.setdefault(f"{row['source']} layers {row['error']} ({row['objective']})", {})[
                (row["family"], row["rho"])] = _cell(row["mean"], pm=row["stderr"])
    for suite in ("train-vision", "train-lm"):
        run = runs.get(suite)
        headline = run.schema.get("headline") if run is not None else None
        ok = trained_runs(run) if run is not None else pd.DataFrame()
        if headline and not ok.empty:
            for row in by_budget(ok, headline[0]).to_dict("records"):
                columns.setdefault(f"{suite} {headline[0]} (sd over seeds)", {})[(row["family"], float(row["rho"]))] = \
                    _cell(row[headline[0]], pm=row[f"{headline[0]}_sd"])
    keys = sorted({key for values in columns.values() for key in values}, key=lambda k: (family_rank(k[0]), -k[1]))
    return pd.DataFrame([{"family": f, "rho": rho, **{name: values.get((f, rho), "") for name, values in columns.items()}}
                         for f, rho in keys])


def coverage(runs: dict[str, RunData]) -> pd.DataFrame:
    """Every registered family against every suite: how many ok rows its reference run holds,
    or why there are none."""
    lines = []
    for family in sorted(list_families(), key=family_rank):
        line: dict[str, Any] = {"family": family}
        for suite in SUITE_ORDER:
            run = runs.get(suite)
            if run is None:
                line[suite] = "no reference run stored yet"
                continue
            frame = run.frame()
            mine = frame[frame["family"] == family] if "family" in frame else frame.iloc[0:0]
            done = int((mine["status"] == "ok").sum()) if not mine.empty else 0
            line[suite] = (f"{done} ok rows" if done else
                           f"{mine['status'].iloc[0]}: {mine['reason'].iloc[0]}" if not mine.empty else "not in this run")
        lines.append(line)
    return pd.DataFrame(lines)


def _runs_table(runs: dict[str, RunData], page_dir: Path) -> pd.DataFrame:
    return pd.DataFrame([{
        "suite": suite, "run": Link(run.run_dir.name, report_href(run, page_dir)), "status": shown_status(run),
        "reliability": reliability_text(run),
        "commits": ", ".join(rows_made_at(run)),
        "machine": (run.meta.get("env") or {}).get("device_name"),
    } for suite in SUITE_ORDER if (run := runs.get(suite)) is not None])


def page_sections(runs: dict[str, RunData], page_dir: Path) -> list[Section]:
    sections = [Section("Reference runs read", "The newest reference run of each suite; a click opens its report.",
                        tables=[_runs_table(runs, page_dir)] if runs else []),
                Section("Coverage", "Every registered family and what each suite's reference run holds of it.",
                        tables=[coverage(runs)])]
    glance = at_a_glance(runs)
    if not glance.empty:
        sections.append(Section(
            "At a glance", "Every family at every budget rho a suite measured, one figure of merit per column with its "
            "interval ([low, high]: 95%) or its spread (±: a standard error, or the sd over training seeds); empty "
            "where that suite did not measure the budget. The sections below show each suite's figures.",
            tables=[glance]))
    kernels = runs.get("kernels")
    if kernels is not None:
        sections.append(_kernels_section(kernels, report_href(kernels, page_dir)))
    if "llama-compress" in runs:
        sections.append(_llama_section(runs["llama-compress"], kernels, page_dir))
    if "approx" in runs:
        sections.append(_approx_section(runs["approx"], page_dir))
    sections.extend(_training_section(runs[suite], page_dir) for suite in ("train-vision", "train-lm") if suite in runs)
    if "train-scaling" in runs:
        run = runs["train-scaling"]
        sections.append(Section(
            "train-scaling: loss at equal training compute",
            f"From the train-scaling reference run ({shown_status(run)}; its report is linked above): "
            "each curve's held-out loss minus dense's at the same training compute, with Student's t 95 % interval over "
            "the seeds; negative is better.", tables=[compute_matched(run)]))
    return sections


def write_page(results: Path) -> Path:
    """``<results>/which-structure.html`` from the newest reference run of each suite."""
    runs = reference_runs(results)
    header = ("<p class='note'>Which structure gives the best accuracy for the FLOPs, bytes and latency it costs? "
              "Every figure here is generated from the rows of the reference runs committed under "
              f"results/{REFERENCE}/, compared at matched budgets (the same kept fraction rho in every suite). "
              "Click a point to open the report of the run it comes from.</p>")
    page = render_page("Which structure?", header, page_sections(runs, results), PLOTLY_FILE,
                       index_href="index.html")
    out = results / PAGE
    out.write_text(page)
    return out
