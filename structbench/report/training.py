"""Report sections shared by the training suites (train-vision, train-lm), from stored rows only.

Every figure and table shows each (family, rho) as the mean over its training seeds with
their standard deviation (error bars, ``<score>_sd``): score against the whole model's MACs
relative to dense (``model_macs_ratio``) with each family's Pareto front and the dense model
as the reference line, the same against parameters, training curves (one figure per recorded
metric, the seeds' mean curve of every (family, rho), coloured by family), and the tables.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from structbench.errors import StructbenchError
from structbench.report.html import Section
from structbench.report.plots import family_color, scatter_by_family
from structbench.results import RunData

SUMMARY = ["family", "rho", "rho_actual", "macs_ratio", "model_macs_ratio", "macs", "params", "train_seconds", "steps", "hparams"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]


def trained_runs(run: RunData) -> pd.DataFrame:
    """The ok rows, each with its training ``seed`` (a run made before seeds were a case key
    trained with the run's own seed)."""
    frame = run.frame()
    ok = frame[frame["status"] == "ok"].copy() if "status" in frame else frame.copy()
    if "seed" not in ok:
        ok["seed"] = run.meta.get("seed", 0)
    ok["seed"] = ok["seed"].fillna(run.meta.get("seed", 0)).astype(int)
    return ok


def by_budget(ok: pd.DataFrame, score: str) -> pd.DataFrame:
    """One row per (family, rho): the mean of ``score`` over the seeds, its standard deviation
    ``<score>_sd`` (empty with one seed), the seed count, the ``low`` / ``high`` of one sd
    either side, and the means of the cost columns (equal across seeds but for Gaudi's
    learned widths)."""
    groups = ok.groupby(["family", "rho"], sort=False)
    costs = [c for c in ("model_macs_ratio", "macs_ratio", "rho_actual", "params", "macs") if c in ok]
    table = groups[costs].mean()
    table[score] = groups[score].mean()
    table[f"{score}_sd"] = groups[score].std(ddof=1)
    table["seeds"] = groups[score].size()
    table = table.reset_index()
    spread = table[f"{score}_sd"].fillna(0.0)
    table["low"], table["high"] = table[score] - spread, table[score] + spread
    table["label"] = table["family"] + " rho=" + table["rho"].map("{:g}".format)
    return table


def _with_reference(fig: go.Figure, dense: pd.DataFrame, score: str) -> go.Figure:
    if not dense.empty:
        value, sd = float(dense[score].iloc[0]), dense[f"{score}_sd"].iloc[0]
        spread = f" +- {sd:.2g}" if pd.notna(sd) else ""
        fig.add_hline(y=value, line_dash="dot", line_color="grey", annotation_text=f"dense {value:.4g}{spread}")
    return fig


def metric_title(run: RunData, column: str) -> str:
    """An axis title for a stored metric: its stored description, with its unit."""
    metric = (run.meta.get("metrics") or {}).get(column) or {}
    description, unit = metric.get("description") or column, metric.get("unit")
    return f"{description} ({unit})" if unit else str(description)


def curves_figure(ok: pd.DataFrame, metric: str, title: str, y_title: str) -> go.Figure:
    """One line per (family, rho): ``metric`` at each evaluation step, the mean over its
    seeds (every seed evaluates at the same steps); colour = family, dash = rho."""
    fig = go.Figure()
    rhos = sorted(ok["rho"].unique())
    for (family, rho), part in ok.sort_values(["family", "rho"]).groupby(["family", "rho"], sort=False):
        curves = [c for c in part["curves"] if isinstance(c, dict) and metric in c]
        if not curves:
            continue
        mean = pd.DataFrame([c[metric] for c in curves]).mean().tolist()
        seeds = f" (mean of {len(curves)} seeds)" if len(curves) > 1 else ""
        fig.add_trace(go.Scatter(
            x=curves[0]["step"], y=mean, mode="lines+markers", name=f"{family} rho={rho:g}{seeds}",
            line={"color": family_color(family), "dash": DASHES[rhos.index(rho) % len(DASHES)]},
            legendgroup=family))
    fig.update_layout(title=title, xaxis_title="optimizer step", yaxis_title=y_title, template="plotly_white", height=460)
    return fig


def budget_table(budgets: pd.DataFrame, score: str) -> pd.DataFrame:
    """Family x rho (from ``by_budget``): the score's mean over seeds, its sd and the whole
    model's MACs ratio, side by side, and how many seeds each mean holds."""
    values = [score, f"{score}_sd", "model_macs_ratio"]
    wide = budgets.pivot_table(index="family", columns="rho", values=values, aggfunc="first", dropna=False, sort=False)
    columns = [(metric, rho) for rho in sorted(budgets["rho"].unique()) for metric in values
               if (metric, rho) in wide.columns]
    wide = wide[columns]
    wide.columns = [f"{'MACs ratio' if metric == 'model_macs_ratio' else metric} @{rho:g}" for metric, rho in columns]
    seeds = budgets.groupby("family", sort=False)["seeds"].agg(lambda n: f"{n.min()}" if n.min() == n.max()
                                                                else f"{n.min()}-{n.max()}")
    return wide.dropna(axis=1, how="all").join(seeds).reset_index()


def train_report(run: RunData) -> list[Section]:
    """The run's first headline metric is the score plotted against the MACs ratio; every
    headline metric gets its training curve."""
    curve_metrics = run.schema.get("headline") or []
    if not curve_metrics:
        raise StructbenchError(f"the {run.suite} report needs a run of schema_version >= 2, which names its "
                               f"headline metrics; {run.run_dir} has schema_version {run.meta.get('schema_version', 1)} "
                               "(its rows are in rows.jsonl and table.csv)")
    score = curve_metrics[0]
    higher_is_better = bool(run.meta.get("metrics", {}).get(score, {}).get("higher_is_better"))
    frame = run.frame()
    ok = trained_runs(run)
    sections: list[Section] = []
    if not ok.empty:
        budgets = by_budget(ok, score)
        dense = budgets[budgets["family"] == "dense"]
        better = "higher" if higher_is_better else "lower"
        score_title = metric_title(run, score)
        seeds = int(budgets["seeds"].max())
        spread = (f"Each point is the mean over its {seeds} training seeds, its error bar one standard deviation "
                  "either side. " if seeds > 1 else "One training seed per point: no error bars (the config's seeds "
                  "list gives them). ")

        def versus(x: str, **options: object) -> go.Figure:
            return _with_reference(scatter_by_family(budgets, x, score, text="label", y_band=("low", "high"),
                                                     y_title=score_title, **options), dense, score)

        sections.append(Section(
            f"{score} against the whole model's MACs",
            f"{spread}model_macs_ratio: fvcore multiply-adds of one forward of the whole model (attention matmuls, "
            f"embeddings, norms and head included) over the dense model's. Dashed: each family's Pareto "
            f"front of the means (no cheaper point is {better}); dotted: the dense reference. rho budgets the "
            f"replaced block linears' parameters (rho_actual: what they kept after training); macs_ratio is their "
            f"MACs over dense's, above 1 where a family costs more compute than dense at that parameter budget.",
            figures=[versus("model_macs_ratio", pareto=True, higher_is_better=higher_is_better,
                            title=f"{score} vs whole-model MACs / dense", x_title="whole-model MACs / dense model's"),
                     versus("params", log_x=True, title=f"{score} vs trainable parameters",
                            x_title="trainable parameters")],
        ))
        sections.append(Section(
            "Training curves",
            "Evaluated at evenly spaced steps, averaged over the seeds; training loss is the mean over the steps "
            "since the previous point.",
            figures=[*(curves_figure(ok, m, f"{m} during training", metric_title(run, m)) for m in curve_metrics),
                     curves_figure(ok, "train_loss", "train_loss during training",
                                   "training loss (mean over the steps since the previous point)")],
        ))
        columns = [c for c in ["family", "rho", "seed", score, *SUMMARY[2:]] if c in ok.columns]
        sections.append(Section(
            f"{score} and MACs ratio by family and budget",
            f"One row per family, per budget rho the mean of {score} over the seeds, its standard deviation "
            f"({score}_sd) and the MACs ratio (dense: its runs at rho 1).",
            tables=[budget_table(budgets, score)]))
        sections.append(Section("All runs", "One row per training run (family, rho, seed).",
                                tables=[ok.sort_values(["family", "rho", "seed"])[columns]]))
    bad = frame[frame["status"] != "ok"] if "status" in frame else frame.iloc[0:0]
    if not bad.empty:
        sections.append(Section("Skipped and failed runs", "A family with no structure at a budget on these layer "
                                "shapes is skipped with its reason.",
                                tables=[bad[[c for c in ("family", "rho", "seed", "status", "reason") if c in bad]]]))
    return sections


def summary(run: RunData) -> pd.DataFrame:
    """The terminal's headline: the score's mean and sd over seeds and the MACs ratio per
    family and budget."""
    ok = trained_runs(run)
    headline = run.schema.get("headline") or []
    return budget_table(by_budget(ok, headline[0]), headline[0]) if headline and not ok.empty else pd.DataFrame()
