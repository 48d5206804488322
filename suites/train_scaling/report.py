"""The train-scaling report: loss against training compute per family, from stored rows only.

A *curve* is one structure of one family (``lowrank rho=0.25``, ``btt rank=1``, ``dense``)
under one scaling on one task; its points are the ladder's widths. At each width the report
keeps the learning-rate factor with the lowest mean held-out loss over the seeds (the sweep
itself is shown, so the choice can be checked; choosing on the same loss that is reported
flatters every curve alike, dense included). Against dense, a point's loss is compared with
the dense curve's at the same training compute, interpolated linearly in log-compute between
dense's two nearest widths (no extrapolation: points outside dense's range are not compared);
the difference is averaged over a curve's comparable points seed by seed (a seed fixes the
data order for every family) and given Student's t interval over the seeds
(``structbench.stats.t_interval``). A power law ``loss = a C^b`` is fitted to each curve's
points (least squares in log-log) to draw and to compare slopes.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from structbench.report.html import Section
from structbench.report.plots import family_color, family_rank
from structbench.results import RunData
from structbench.stats import t_interval

POINT = ["task", "scaling", "curve", "family", "width"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
BEATS, WORSE, UNSETTLED, OUTSIDE = "beats dense", "worse than dense", "unsettled", "outside dense's compute range"


def curve_label(row: pd.Series) -> str:
    if row["family"] == "dense":
        return "dense"
    if pd.notna(row.get("rank")):
        return f"{row['family']} rank={int(row['rank'])}"
    return f"{row['family']} rho={row['rho']:g}"


def trained(run: RunData) -> pd.DataFrame:
    """The ok rows, each with its ``curve`` label."""
    frame = run.frame()
    ok = frame[frame["status"] == "ok"].copy() if "status" in frame else frame.copy()
    if ok.empty:
        return ok
    if "rank" not in ok:
        ok["rank"] = np.nan
    ok["curve"] = ok.apply(curve_label, axis=1)
    return ok


def sweep(ok: pd.DataFrame) -> pd.DataFrame:
    """One row per (point, learning-rate factor): mean and sd of the held-out loss over its
    seeds, the seed count and the mean training MACs."""
    groups = ok.groupby([*POINT, "lr_factor"], sort=False)
    table = groups.agg(eval_loss=("eval_loss", "mean"), eval_loss_sd=("eval_loss", "std"),
                       seeds=("eval_loss", "size"), train_macs=("train_macs", "mean"),
                       rho_actual=("rho_actual", "mean"), macs_ratio=("macs_ratio", "mean")).reset_index()
    return table


def best(points: pd.DataFrame) -> pd.DataFrame:
    """Per point, the learning-rate factor with the lowest mean loss (its row of ``sweep``)."""
    return points.loc[points.groupby(POINT, sort=False)["eval_loss"].idxmin()].reset_index(drop=True)


def _seed_losses(ok: pd.DataFrame, chosen: pd.DataFrame) -> dict[tuple, dict[int, float]]:
    """(task, scaling, curve, width) -> seed -> loss, at each point's chosen learning rate."""
    keep = ok.merge(chosen[[*POINT, "lr_factor"]], on=[*POINT, "lr_factor"])
    found: dict[tuple, dict[int, float]] = {}
    for row in keep.itertuples():
        found.setdefault((row.task, row.scaling, row.curve, row.width), {})[int(row.seed)] = float(row.eval_loss)
    return found


def _interpolate(x: float, xs: list[float], ys: list[float]) -> float | None:
    """``ys`` at ``x`` linearly in ``log x`` between the two nearest ``xs`` (sorted); None outside."""
    lx, lxs = math.log(x), [math.log(v) for v in xs]
    if not lxs or lx < lxs[0] - 1e-12 or lx > lxs[-1] + 1e-12:
        return None
    for k in range(len(lxs) - 1):
        if lxs[k] <= lx <= lxs[k + 1]:
            t = 0.0 if lxs[k + 1] == lxs[k] else (lx - lxs[k]) / (lxs[k + 1] - lxs[k])
            return ys[k] + t * (ys[k + 1] - ys[k])
    return ys[-1]


def power_fit(points: pd.DataFrame) -> tuple[float, float] | None:
    """``(a, b)`` of ``loss = a C^b`` by least squares in log-log, or None below two points."""
    if len(points) < 2:
        return None
    slope, intercept = np.polyfit(np.log(points["train_macs"]), np.log(points["eval_loss"]), 1)
    return float(math.exp(intercept)), float(slope)


def versus_dense(ok: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """Per (task, scaling, curve): its mean loss difference to dense at equal training compute
    over its comparable points, the t interval over seeds, the verdict, and the fitted exponent."""
    seeds = _seed_losses(ok, chosen)
    rows = []
    for (task, scaling), part in chosen.groupby(["task", "scaling"], sort=False):
        dense = part[part["curve"] == "dense"].sort_values("train_macs")
        dense_fit, dense_macs = power_fit(dense), list(dense["train_macs"])
        ref = {w: seeds.get((task, scaling, "dense", w), {}) for w in dense["width"]}
        for curve, points in sorted(part.groupby("curve", sort=False),
                                    key=lambda item: (family_rank(item[1]["family"].iloc[0]), item[0])):
            if curve == "dense":
                continue
            per_seed: dict[int, list[float]] = {}
            compared = 0
            for point in points.itertuples():
                if _interpolate(point.train_macs, dense_macs, list(dense["eval_loss"])) is None:
                    continue
                compared += 1
                for seed, loss in seeds.get((task, scaling, curve, point.width), {}).items():
                    if all(seed in ref[w] for w in dense["width"]):
                        at = _interpolate(point.train_macs, dense_macs, [ref[w][seed] for w in dense["width"]])
                        per_seed.setdefault(seed, []).append(loss - at)
            fit = power_fit(points.sort_values("train_macs"))
            row = {"task": task, "scaling": scaling, "curve": curve, "widths": len(points), "compared": compared,
                   "exponent": fit[1] if fit else math.nan, "dense exponent": dense_fit[1] if dense_fit else math.nan}
            diffs = [float(np.mean(v)) for v in per_seed.values() if len(v) == compared and compared]
            if not diffs:
                row.update({"loss - dense": math.nan, "95% CI": "", "seeds": 0, "verdict": OUTSIDE})
            else:
                interval = t_interval(diffs)
                side = interval.side() if len(diffs) > 1 else 0
                row.update({"loss - dense": interval.estimate, "seeds": len(diffs),
                            "95% CI": "" if math.isnan(interval.low) else f"[{interval.low:+.4f}, {interval.high:+.4f}]",
                            "verdict": BEATS if side < 0 else WORSE if side > 0 else UNSETTLED})
            rows.append(row)
    return pd.DataFrame(rows)


def scaling_effect(ok: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """Per (task, curve, width) run under both scalings: structure-aware minus standard loss at
    each one's best learning rate, seed by seed, with the t interval over the seeds."""
    seeds = _seed_losses(ok, chosen)
    rows = []
    for (task, curve, width), part in chosen.groupby(["task", "curve", "width"], sort=False):
        if set(part["scaling"]) != {"standard", "structure-aware"}:
            continue
        std, aware = seeds.get((task, "standard", curve, width), {}), seeds.get((task, "structure-aware", curve, width), {})
        diffs = [aware[s] - std[s] for s in sorted(set(std) & set(aware))]
        if not diffs:
            continue
        interval = t_interval(diffs)
        lrs = part.set_index("scaling")["lr_factor"]
        rows.append({"task": task, "curve": curve, "width": width, "standard": float(np.mean(list(std.values()))),
                     "structure-aware": float(np.mean(list(aware.values()))), "aware - standard": interval.estimate,
                     "95% CI": "" if math.isnan(interval.low) else f"[{interval.low:+.4f}, {interval.high:+.4f}]",
                     "best lr standard": lrs["standard"], "best lr aware": lrs["structure-aware"]})
    return pd.DataFrame(rows)


def _curves_figure(part: pd.DataFrame, title: str) -> go.Figure:
    fig = go.Figure()
    variants: dict[str, list[str]] = {}
    for curve, points in sorted(part.groupby("curve", sort=False),
                                key=lambda item: (family_rank(item[1]["family"].iloc[0]), item[0])):
        points = points.sort_values("train_macs")
        family = str(points["family"].iloc[0])
        dashes = variants.setdefault(family, [])
        dashes.append(curve)
        color = family_color(family)
        fig.add_trace(go.Scatter(
            x=points["train_macs"], y=points["eval_loss"], mode="lines+markers", name=curve, legendgroup=curve,
            line={"color": color, "dash": DASHES[(len(dashes) - 1) % len(DASHES)], "width": 3 if curve == "dense" else 2},
            error_y={"type": "data", "array": points["eval_loss_sd"].fillna(0).tolist(), "thickness": 1},
            text=[f"width {w}, lr x{lr:g}, {n} seeds" for w, lr, n in zip(points["width"], points["lr_factor"], points["seeds"])]))
        fit = power_fit(points)
        if fit is not None:
            xs = np.geomspace(points["train_macs"].min(), points["train_macs"].max(), 20)
            fig.add_trace(go.Scatter(x=xs, y=fit[0] * xs ** fit[1], mode="lines", showlegend=False, legendgroup=curve,
                                     hoverinfo="skip", line={"color": color, "dash": "dot", "width": 1}))
    fig.update_layout(title=title, xaxis_title="training compute (MACs: 3 x forward x examples seen)",
                      yaxis_title="held-out loss (nat)", template="plotly_white", height=480)
    fig.update_xaxes(type="log")
    return fig.update_yaxes(type="log")


def _sweep_figure(points: pd.DataFrame, title: str) -> go.Figure:
    """Loss against the learning-rate factor at the ladder's largest width, one line per curve."""
    fig = go.Figure()
    top = points[points["width"] == points["width"].max()]
    for curve, part in sorted(top.groupby("curve", sort=False),
                              key=lambda item: (family_rank(item[1]["family"].iloc[0]), item[0])):
        part = part.sort_values("lr_factor")
        fig.add_trace(go.Scatter(x=part["lr_factor"], y=part["eval_loss"], mode="lines+markers", name=curve,
                                 line={"color": family_color(str(part["family"].iloc[0]))},
                                 error_y={"type": "data", "array": part["eval_loss_sd"].fillna(0).tolist(),
                                          "thickness": 1}))
    fig.update_layout(title=title, xaxis_title="learning rate / recipe's", yaxis_title="held-out loss (nat)",
                      template="plotly_white", height=420)
    return fig.update_xaxes(type="log")


def scaling_report(run: RunData) -> list[Section]:
    ok = trained(run)
    sections: list[Section] = []
    if not ok.empty:
        points = sweep(ok)
        chosen = best(points)
        seeds = int(points["seeds"].max())
        sections.append(Section(
            "Which families beat dense per unit of compute",
            f"Per curve, its held-out loss minus dense's at the same training compute (dense interpolated in "
            f"log-compute between its two nearest widths; negative: better than dense), averaged over the curve's "
            f"comparable widths seed by seed, with Student's t 95 % interval over the {seeds} seeds. Each point "
            "at its best learning-rate factor. exponent: the slope of the fitted power law loss = a C^b.",
            tables=[versus_dense(ok, chosen)]))
        for (task, scaling), part in chosen.groupby(["task", "scaling"], sort=False):
            sections.append(Section(
                f"{task}, {scaling}: loss against training compute",
                "Each point a width of the ladder at its best learning-rate factor, the mean over the seeds with one "
                "standard deviation as error bars; dotted: each curve's fitted power law.",
                figures=[_curves_figure(part, f"{task} ({scaling}): held-out loss vs training MACs"),
                         _sweep_figure(points[(points["task"] == task) & (points["scaling"] == scaling)],
                                       f"{task} ({scaling}): the learning-rate sweep at the largest width")]))
        effect = scaling_effect(ok, chosen)
        if not effect.empty:
            sections.append(Section(
                "The effect of structure-aware scaling",
                "Per point run both ways: the loss with structure-aware scaling (per-factor learning rates, "
                "zero-initialised residual outputs) minus the loss with the recipe as it is, each at its own best "
                "learning-rate factor, seed by seed, with Student's t 95 % interval over the seeds (negative: "
                "structure-aware is better).", tables=[effect]))
        sweep_table = points.pivot_table(index=["task", "scaling", "curve", "width"], columns="lr_factor",
                                         values="eval_loss", sort=False).reset_index()
        sweep_table.columns = [c if isinstance(c, str) else f"lr x{c:g}" for c in sweep_table.columns]
        sections.append(Section("The learning-rate sweep", "Mean held-out loss over the seeds per learning-rate "
                                "factor (times the task's recipe rate).", tables=[sweep_table]))
        sections.append(Section("All points", "Per point and learning-rate factor: the mean loss, its sd over the "
                                "seeds, the training MACs and what the structure kept.", tables=[points]))
    frame = run.frame()
    bad = frame[frame["status"] != "ok"] if "status" in frame else frame.iloc[0:0]
    if not bad.empty:
        columns = [c for c in ("task", "family", "rho", "rank", "width", "status", "reason") if c in bad]
        sections.append(Section("Skipped and failed runs", "A family with no structure at a budget or rank on a "
                                "rung's shapes is skipped with its reason.",
                                tables=[bad[columns].drop_duplicates()]))
    return sections


def summary(run: RunData) -> pd.DataFrame:
    """The terminal's and the docs' headline: each curve against dense at equal compute."""
    ok = trained(run)
    return pd.DataFrame() if ok.empty else versus_dense(ok, best(sweep(ok)))


REPORTS = {"train-scaling": scaling_report}
SUMMARIES = {"train-scaling": summary}
TABLES = {"train-scaling": {"headline": summary}}
