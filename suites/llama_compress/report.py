"""Report of the llama-compress suite, from stored rows only.

The paper-shaped table (family, CR, re-trained?, perplexity with its 95 % interval, accuracy
per task and their average with lm-eval's standard error, the draw-to-draw spread of
calibrated cases and the verdict against the dense model), the paired verdicts of every case
against dense and against the other families at the same CR and objective, perplexity and
accuracy against CR per family with the dense model as the reference line, and size and
speed (parameters, bytes, MACs per token, throughput).
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Iterable

import pandas as pd

from structbench.report.html import Section
from structbench.report.plots import family_rank, lines_by_family, scatter_by_family
from structbench.results import RunData
from structbench.stats import UNCLEAR, agreed, mcnemar, paired_rate_difference, verdict
from structbench.stats import NOISY

ACHIEVED_CR = "achieved CR %"  # 100 x the stored ``cr`` (1 - rho_actual of the targeted linears)
SPEED = ["family", ACHIEVED_CR, "cr_linear", "cr_model", "objective", "retrained", "draw", "params", "bytes", "linear_params", "macs_per_token",
         "prefill_tokens_per_s", "generate_tokens_per_s", "generate_spread", "generate_noisy", "rel_error_mean",
         "weighted_error_mean", "calibration_mode", "projection_seconds", "calibration_seconds", "retrain_seconds",
         "case_seconds", "hparams"]
TITLES = {
    ACHIEVED_CR: "compression ratio of targeted linears (%)",
    "perplexity": "perplexity on held-out Wikipedia (log scale)",
    "acc_avg": "mean task accuracy",
    "macs_per_token": "multiply-adds per token (whole model)",
    "generate_tokens_per_s": "greedy decode speed (tokens/s)",
    "params": "parameters (whole model)",
}
CASE = ["family", "rho", "objective", "retrained"]
"""The fields of one model; a calibrated model's rows differ only in their calibration ``draw``."""


def task_labels(frame: pd.DataFrame) -> list[str]:
    """Tasks present in the rows, in column order (``acc_<label>`` beside ``chance_<label>``)."""
    return [c.removeprefix("chance_") for c in frame.columns if c.startswith("chance_")]


def _objectives(ok: pd.DataFrame) -> pd.Series:
    """Each row's projection objective (rows of runs before the objective axis: ``frobenius``)."""
    return ok["objective"].fillna("frobenius") if "objective" in ok else pd.Series("frobenius", index=ok.index)


def ordered(ok: pd.DataFrame) -> pd.DataFrame:
    ok = ok.assign(objective=_objectives(ok), draw=ok["draw"] if "draw" in ok else None)
    return ok.assign(_f=ok["family"].map(lambda f: family_rank(f)[0]), _r=-ok["rho"]).sort_values(
        ["_f", "_r", "objective", "retrained", "draw"]).drop(columns=["_f", "_r"])


def _cases(ok: pd.DataFrame) -> list[list[dict[str, Any]]]:
    """The rows of each model in table order, a calibrated model's draws together."""
    found: dict[tuple, list[dict[str, Any]]] = {}
    for row in ok.to_dict("records"):
        found.setdefault(tuple(row[k] for k in CASE), []).append(row)
    return list(found.values())


def _value(row: dict[str, Any], key: str) -> Any:
    """A row's field, None where the row lacks it (older runs, NaN in a frame of mixed rows)."""
    value = row.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [_value(r, key) for r in rows]
    return statistics.fmean(values) if values and None not in values else None


def _spread(rows: list[dict[str, Any]], key: str, digits: int) -> str:
    """Draw-to-draw sd and range (max - min) of ``key``; empty for a model of one row."""
    values = [_value(r, key) for r in rows]
    if len(values) < 2 or None in values:
        return ""
    return f"sd {statistics.stdev(values):.{digits}f}, range {max(values) - min(values):.{digits}f}"


def _with_stderr(rows: list[dict[str, Any]], key: str, stderr: str) -> str:
    value, error = _mean(rows, key), _mean(rows, stderr)
    if value is None:
        return ""
    return f"{value:.3f}" if error is None else f"{value:.3f} ± {error:.3f}"


def _interval(rows: list[dict[str, Any]]) -> str:
    low, high = _mean(rows, "ppl_low"), _mean(rows, "ppl_high")
    return "" if low is None or high is None else f"[{low:.4g}, {high:.4g}]"


# ---- paired verdicts -----------------------------------------------------------------
def _draw_pairs(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Rows of two models measured alike: calibrated models draw by draw (the same calibration
    text), a model of one row against each draw of the other."""
    if len(b) == 1:
        return [(x, b[0]) for x in a]
    if len(a) == 1:
        return [(a[0], y) for y in b]
    by_draw = {y["draw"]: y for y in b}
    return [(x, by_draw[x["draw"]]) for x in a if x["draw"] in by_draw]


def _correct(row: dict[str, Any], kind: str, tasks: list[str]) -> list[int] | None:
    """Per-item 0/1 of ``kind`` (``acc`` or ``acc_norm``) over all tasks, in task order."""
    column = "correct" if kind == "acc" else "correct_norm"
    lists = [_value(row, f"{column}_{t}") for t in tasks]
    return None if any(not isinstance(v, list) for v in lists) else [c for v in lists for c in v]


def _perplexity_verdict(pairs: list[tuple[dict[str, Any], dict[str, Any]]], seed: int) -> dict[str, Any]:
    """Perplexity ratio a / b with the paired bootstrap interval over the shared windows; over
    several draws the mean ratio, the union of the intervals and the verdict they agree on."""
    found = []
    for x, y in pairs:
        tokens = _value(x, "ppl_window_tokens")
        if tokens is None or tokens != _value(y, "ppl_window_tokens"):
            continue  # not measured on the same windows: no paired comparison
        found.append(paired_rate_difference(x["ppl_window_nll"], y["ppl_window_nll"], tokens, seed=seed))
    if not found:
        return {"ppl ratio": None, "ppl ratio 95% CI": "", "perplexity": ""}
    low, high = math.exp(min(d.low for d in found)), math.exp(max(d.high for d in found))
    return {"ppl ratio": math.exp(statistics.fmean(d.estimate for d in found)),
            "ppl ratio 95% CI": f"[{low:.4f}, {high:.4f}]",
            "perplexity": agreed(verdict(d.side(), higher_is_better=False) for d in found)}


def _accuracy_verdict(pairs: list[tuple[dict[str, Any], dict[str, Any]]], kind: str, tasks: list[str]) -> dict[str, Any]:
    """Accuracy difference a - b over every task's items with the exact McNemar test; over
    several draws the mean difference, the largest p-value and the verdict they agree on."""
    found = []
    for x, y in pairs:
        a, b = _correct(x, kind, tasks), _correct(y, kind, tasks)
        if a is not None and b is not None and len(a) == len(b) and a:
            found.append(mcnemar(a, b))
    if not found:
        return {f"{kind} diff": None, f"{kind} p": None, kind: ""}
    return {f"{kind} diff": statistics.fmean(t.difference for t in found), f"{kind} p": max(t.p_value for t in found),
            kind: agreed(verdict(t.direction, higher_is_better=True) for t in found)}


def _comparison(a: list[dict[str, Any]], b: list[dict[str, Any]], tasks: list[str], seed: int) -> dict[str, Any]:
    pairs = _draw_pairs(a, b)
    return {**_perplexity_verdict(pairs, seed), **_accuracy_verdict(pairs, "acc", tasks),
            **_accuracy_verdict(pairs, "acc_norm", tasks)}


def _label(rows: list[dict[str, Any]]) -> dict[str, Any]:
    first = rows[0]
    return {"family": first["family"], "CR %": round((1 - first["rho"]) * 100),
            "objective": first["objective"] if first["family"] != "dense" else "-",
            "re-trained": "yes" if first["retrained"] else "no"}


def verdict_table(ok: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Every model against the dense one, and against every other family at the same CR,
    objective and re-training: ``a / b`` perplexity and ``a - b`` accuracy on the very same
    windows and items, called better or worse only when the paired interval excludes no
    difference (perplexity) or McNemar's test rejects it at 5 % (accuracy)."""
    tasks, cases = task_labels(ok), _cases(ok)
    dense = next((rows for rows in cases if rows[0]["family"] == "dense" and not rows[0]["retrained"]), None)
    lines = []
    for i, rows in enumerate(cases):
        against = [("dense", dense)] if dense is not None and rows is not dense else []
        against += [(other[0]["family"], other) for other in cases[i + 1:] if other[0]["family"] != "dense"
                    and rows[0]["family"] != "dense" and all(other[0][k] == rows[0][k] for k in CASE[1:])]
        for name, other in against:
            lines.append({**_label(rows), "against": name, "draws": len(_draw_pairs(rows, other)),
                          **_comparison(rows, other, tasks, seed)})
    return pd.DataFrame(lines)


def _against_dense(verdicts: pd.DataFrame, rows: list[dict[str, Any]]) -> dict[str, str]:
    if verdicts.empty:
        return {"vs dense: perplexity": "", "vs dense: acc": ""}
    label = _label(rows)
    match = verdicts[(verdicts["against"] == "dense") & (verdicts[list(label)] == pd.Series(label)).all(axis=1)]
    if match.empty:
        return {"vs dense: perplexity": "-", "vs dense: acc": "-"}
    return {"vs dense: perplexity": match["perplexity"].iloc[0], "vs dense: acc": match["acc"].iloc[0]}


def paper_table(ok: pd.DataFrame, verdicts: pd.DataFrame | None = None) -> pd.DataFrame:
    """One line per model in the shape of the BLAST paper's Llama table.

    CR is the nominal compression of the targeted projections (1 - rho, in %); the
    achieved one is ``achieved CR %`` in the size table. The objective is what the projection
    minimised (``frobenius``: the weights; ``calibrated``: the outputs on calibration
    text). Per task both ``acc`` (summed log-likelihood) and ``acc_norm`` (per character),
    each ``± `` lm-eval's standard error: a small model can sit at chance on one and clearly
    above it on the other. A calibrated model's line is the mean over its calibration draws
    (perplexity, the ends of its interval, accuracies and their standard errors), with the
    draw-to-draw sd and range of perplexity and of the average accuracy beside it.
    Where a family's structures are mixed across matrices to meet the budget
    (``structbench.allocate``), ``cr_linear`` is within a point of the target, or the case is
    skipped saying why; ``cr_model`` is the whole model's.
    """
    tasks = task_labels(ok)
    verdicts = verdicts if verdicts is not None else pd.DataFrame()
    lines = []
    for rows in _cases(ok):
        lines.append({
            **_label(rows), "draws": len(rows),
            "perplexity": _mean(rows, "perplexity"), "ppl 95% CI": _interval(rows),
            "ppl draws": _spread(rows, "perplexity", 3),
            **{f"{task} {kind}": _with_stderr(rows, f"{kind}_{task}", f"{kind}_stderr_{task}")
               for task in tasks for kind in ("acc", "acc_norm")},
            "average acc": _with_stderr(rows, "acc_avg", "acc_avg_stderr"),
            "average acc_norm": _with_stderr(rows, "acc_norm_avg", "acc_norm_avg_stderr"),
            "acc draws": _spread(rows, "acc_avg", 4),
            **_against_dense(verdicts, rows),
        })
    return pd.DataFrame(lines)


def case_means(ok: pd.DataFrame) -> pd.DataFrame:
    """One row per model, numeric columns averaged over its calibration draws (for figures)."""
    numeric = [c for c in ok.columns if c not in CASE and pd.api.types.is_numeric_dtype(ok[c])]
    return ok.groupby(CASE, sort=False, dropna=False)[numeric].mean().reset_index()


def _notes(run: RunData, ok: pd.DataFrame) -> str:
    config = run.meta.get("config", {})
    quick = run.meta.get("cli", {}).get("quick")
    first = ok.iloc[0]
    chance = ", ".join(f"{t} {first[f'chance_{t}']:.3f} ({int(first[f'items_{t}'])} items)" for t in task_labels(ok))
    return (f"Model {config.get('model')}{' (--quick)' if quick else ''}: the linear projections "
            f"{', '.join(map(str, config.get('projections', [])))} of decoder layers {config.get('layers')} replaced by "
            f"each family at rho = kept fraction of each matrix's parameters (CR = 100 (1 - rho) %), projected from the "
            f"pretrained weights "
            f"either in Frobenius norm or against calibration inputs ({_calibration_note(config)}). "
            f"Perplexity on {int(first['ppl_tokens'])} tokens of held-out Wikipedia lead sections "
            f"({_windows_note(first)}), with a 95% BCa bootstrap interval over the windows. Zero-shot accuracy: summed "
            f"log-likelihood of each answer given the question (lm-evaluation-harness scoring), ± lm-eval's standard "
            f"error sqrt(p (1 - p) / (n - 1)) (the average's: of a mean of independent tasks); chance: {chance}. "
            f"SmolLM2's weights come from a 4-bit GGUF expanded to fp32, not the original bf16 checkpoint.")


def _windows_note(row: pd.Series) -> str:
    windows = f"{int(row['ppl_windows'])} windows"
    if "ppl_window" not in row or pd.isna(row["ppl_window"]):
        return windows
    protocol = f"{row['ppl_protocol']} protocol: " if isinstance(row.get("ppl_protocol"), str) else ""
    return f"{protocol}{windows} of {int(row['ppl_window'])} tokens every {int(row['ppl_stride'])}"


def _calibration_note(config: dict) -> str:
    calib = config.get("calibration")
    if not calib:
        return "not configured"
    draws = calib.get("draws", 1)
    sample = (f"{draws} disjoint draws of {calib['tokens']} tokens each (seed {calib.get('seed', 0)})" if draws > 1
              else f"{calib['tokens']} tokens")
    return (f"{sample} of the Wikipedia train split in sequences of {calib['seq_len']}, "
            f"{calib['mode']} Grams, ridge {calib['damp']} x mean diagonal, {calib['refine_steps']} refinement steps "
            f"for families without a closed form")


def _words(values: Iterable[object]) -> str:
    """``a, b and c``."""
    shown = [str(v) for v in values]
    return ", ".join(shown[:-1]) + f" and {shown[-1]}" if len(shown) > 1 else "".join(shown)


def _percent_list(rhos: Iterable[float]) -> str:
    """The compression ratios of kept fractions ``rhos``, in percent, ascending: ``10, 20 and 50``."""
    return _words(f"{cr:g}" for cr in sorted({round(100 * (1 - float(rho)), 1) for rho in rhos}))


def subtitle(run: RunData) -> str:
    """What this run compressed, at which CRs and how, from its own resolved config."""
    config = run.meta.get("config") or {}
    quick = " (--quick)" if (run.meta.get("cli") or {}).get("quick") else ""
    families = [f for f in config.get("families") or [] if f != "dense"]
    objectives = config.get("objectives") or []
    text = (f"{config.get('model')}{quick}: {len(families)} families at CR {_percent_list(config.get('rhos') or [])} % "
            f"of the targeted linears, projected in {_words(objectives)} objective{'s' if len(objectives) != 1 else ''}")
    retrain = config.get("retrain") or {}
    if config.get("retrain_steps") and retrain.get("rhos"):
        text += (f"; re-trained at CR {_percent_list(retrain['rhos'])} % ({config['retrain_steps']} steps, "
                 f"{_words(retrain.get('objectives') or [])} only"
                 f"{', and the dense model alike' if retrain.get('dense') else ''})")
    return text + ": perplexity, zero-shot accuracy, size, MACs per token and decode speed against the dense model."


def _speed_note(ok: pd.DataFrame) -> str:
    note = ("MACs per token: fvcore over one forward of the whole model (eager attention, LM head included) divided "
            "by the tokens. Throughput: batch 1, medians; prefill = prompt tokens per second of one forward, "
            "generate = greedy decode steps per second with the KV cache. ")
    if "generate_noisy" not in ok:
        return note + "This run did not record the spread of its decode speeds, so none is flagged noisy."
    noisy = int(ok["generate_noisy"].fillna(False).astype(bool).sum())
    return note + (f"{noisy} of {len(ok)} decode speeds noisy (generate_noisy: IQR / median of the repeats above "
                   f"{NOISY:g}), drawn hollow: on a busy machine they say little.")


def _seed(run: RunData) -> int:
    return int(run.meta.get("seed") or 0)


def llama_compress_report(run: RunData) -> list[Section]:
    frame = run.frame()
    ok = frame[frame["status"] == "ok"] if "status" in frame else frame
    sections: list[Section] = []
    if not ok.empty and "perplexity" in ok:
        ok = ordered(ok.copy())
        ok[ACHIEVED_CR] = 100 * ok["cr"].astype(float)
        ok["label"] = ok["family"].astype(str) + " CR " + ok[ACHIEVED_CR].round(1).map("{:g}".format) + " %"
        ok["cr"] = ok["cr"].astype(float)
        verdicts = verdict_table(ok, _seed(run))
        sections.append(Section("Compressed Llama: perplexity and zero-shot accuracy", _notes(run, ok),
                                tables=[paper_table(ok, verdicts)]))
        if not verdicts.empty:
            sections.append(Section("Paired verdicts", _VERDICT_NOTE, tables=[verdicts]))
        means = case_means(ok)
        dense = means[means["family"] == "dense"]
        band = ("ppl_low", "ppl_high") if "ppl_low" in means else None
        for (objective, retrained), part in means[means["family"] != "dense"].groupby(["objective", "retrained"]):
            part = pd.concat([dense, part])
            part = part.assign(**{ACHIEVED_CR: 100 * part["cr"].astype(float)})
            suffix = f" ({objective}{', re-trained' if retrained else ''})"
            reference = lambda col: float(dense[col].iloc[0]) if not dense.empty else None  # noqa: E731
            sections.append(Section(
                f"Quality against compression{suffix}",
                "x: achieved compression of the targeted projections in percent (dense at 0); dotted: the dense model; "
                "shaded: perplexity's 95% interval; calibrated models: the mean over their draws.",
                figures=[lines_by_family(part, ACHIEVED_CR, "perplexity", title=f"perplexity vs CR{suffix}", log_y=True,
                                         band=band, reference=reference("perplexity"), x_title=TITLES[ACHIEVED_CR],
                                         y_title=TITLES["perplexity"]),
                         lines_by_family(part, ACHIEVED_CR, "acc_avg", title=f"average zero-shot acc vs CR{suffix}",
                                         reference=reference("acc_avg"), x_title=TITLES[ACHIEVED_CR],
                                         y_title=TITLES["acc_avg"])]))
        sections.append(Section(
            "Size and speed", _speed_note(ok),
            figures=[scatter_by_family(ok, "macs_per_token", "generate_tokens_per_s", text="label",
                                       hollow="generate_noisy" if "generate_noisy" in ok else None,
                                       title="greedy decode tokens/s vs MACs per token",
                                       x_title=TITLES["macs_per_token"], y_title=TITLES["generate_tokens_per_s"]),
                     scatter_by_family(ok, "params", "perplexity", text="label", log_y=True, pareto=True,
                                       higher_is_better=False, title="perplexity vs parameters",
                                       x_title=TITLES["params"], y_title=TITLES["perplexity"])],
            tables=[ok[[c for c in SPEED if c in ok.columns]]]))
    bad = frame[frame["status"] != "ok"] if "status" in frame else frame.iloc[0:0]
    if not bad.empty:
        columns = [c for c in ("family", "rho", "objective", "retrained", "draw", "status", "reason") if c in bad]
        sections.append(Section("Skipped and failed cases", tables=[bad[columns]]))
    return sections


_VERDICT_NOTE = (
    "Each model (a) against the dense model and against every other family at the same CR, objective and "
    "re-training (b), on the very same test windows and task items. Perplexity: the ratio a / b with a paired "
    "95% bootstrap interval over the windows; accuracy: a - b over all tasks' items with the exact McNemar test. "
    f"'better' or 'worse' only when the interval excludes 1 or p < 0.05, '{UNCLEAR}' otherwise. Calibrated models "
    "are paired draw by draw (the same calibration text); over several draws the ratio and difference are means, "
    "the interval spans every draw's, p is the largest, and a verdict holds only when every draw gives it. Each "
    "line is one test at 5%: among many lines some false calls are expected (docs/statistics.md).")


def summary(run: RunData) -> pd.DataFrame:
    """The terminal's headline: the paper-shaped table, with each model's verdict against dense."""
    frame = run.frame()
    ok = frame[frame["status"] == "ok"] if "status" in frame else frame
    if ok.empty:
        return pd.DataFrame()
    ok = ordered(ok.copy())
    return paper_table(ok, verdict_table(ok, _seed(run)))


def _ok_ordered(run: RunData) -> pd.DataFrame:
    frame = run.frame()
    ok = frame[frame["status"] == "ok"] if "status" in frame else frame
    return ordered(ok.copy()) if not ok.empty and "perplexity" in ok else pd.DataFrame()


def protocol_table(run: RunData) -> pd.DataFrame:
    """What the default evaluation size buys: the dense model's perplexity with its 95 %
    interval and relative half-width, each task's accuracy with its standard error, the units
    behind each and the seconds each took."""
    ok = _ok_ordered(run)
    dense = ok[(ok["family"] == "dense") & ~ok["retrained"].astype(bool)] if not ok.empty else ok
    if dense.empty:
        return pd.DataFrame()
    row = dense.iloc[0]
    lines = [{"figure": "perplexity", "units": f"{int(row['ppl_windows'])} windows, {int(row['ppl_tokens'])} tokens",
              "value": row["perplexity"], "interval or ± stderr": f"[{row['ppl_low']:.4g}, {row['ppl_high']:.4g}]",
              "half-width %": 100 * (row["ppl_high"] - row["ppl_low"]) / (2 * row["perplexity"]),
              "seconds": row.get("ppl_seconds")}]
    for task in task_labels(ok):
        for kind in ("acc", "acc_norm"):
            lines.append({"figure": f"{task} {kind}", "units": f"{int(row[f'items_{task}'])} items",
                          "value": row[f"{kind}_{task}"], "interval or ± stderr": f"± {row[f'{kind}_stderr_{task}']:.3g}",
                          "half-width %": None, "seconds": row.get("tasks_seconds") if kind == "acc" else None})
    return pd.DataFrame(lines)


def retrained_table(run: RunData) -> pd.DataFrame:
    """Each re-trained model against itself before re-training and against the re-trained
    dense control: perplexities (means over draws), the share of the gap to the control it
    closed, and its first and last training loss."""
    ok = _ok_ordered(run)
    if ok.empty or not ok["retrained"].astype(bool).any():
        return pd.DataFrame()
    means = case_means(ok)
    control = means[(means["family"] == "dense") & means["retrained"].astype(bool)]
    control_ppl = float(control["perplexity"].iloc[0]) if not control.empty else math.nan
    lines = []
    for row in means[means["retrained"].astype(bool) & (means["family"] != "dense")].to_dict("records"):
        before = means[(means["family"] == row["family"]) & (means["rho"] == row["rho"])
                       & (means["objective"] == row["objective"]) & ~means["retrained"].astype(bool)]
        ppl_before = float(before["perplexity"].iloc[0]) if not before.empty else math.nan
        gap = ppl_before - control_ppl
        lines.append({"family": row["family"], "CR %": round((1 - row["rho"]) * 100), "objective": row["objective"],
                      "ppl before": ppl_before, "ppl after": row["perplexity"], "ppl control": control_ppl,
                      "gap closed": (ppl_before - row["perplexity"]) / gap if gap > 0 else math.nan,
                      "loss first": row.get("retrain_loss_first"), "loss last": row.get("retrain_loss_last")})
    return pd.DataFrame(lines)


def speed_table(run: RunData) -> pd.DataFrame:
    """Size and speed per model: parameters, bytes, MACs per token, the achieved CR of the
    targeted linears and of the whole model, batch-1 prefill and decode throughput with the
    decode repeats' spread (IQR / median)."""
    ok = _ok_ordered(run)
    if ok.empty:
        return pd.DataFrame()
    means = case_means(ok)
    means = means[~means["retrained"].astype(bool)]
    columns = [c for c in ("family", "rho", "objective", "cr_linear", "cr_model", "params", "bytes", "macs_per_token",
                           "prefill_tokens_per_s", "generate_tokens_per_s", "generate_spread") if c in means]
    return means[columns]


REPORTS = {"llama-compress": llama_compress_report}
SUMMARIES = {"llama-compress": summary}
TABLES = {"llama-compress": {"headline": summary, "protocol": protocol_table, "retrained": retrained_table,
                             "speed": speed_table}}
SUBTITLES = {"llama-compress": subtitle}
