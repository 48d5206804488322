"""Report sections shared by the training suites (train-vision, train-lm), from stored rows only.

Score against the whole model's MACs relative to dense (``model_macs_ratio``) with each family's Pareto front and the dense model as the
reference line, the same against parameters, training curves (one figure per recorded
metric: every (family, rho) run, coloured by family), and the tables.
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


def _with_reference(fig: go.Figure, dense: pd.DataFrame, score: str) -> go.Figure:
    if not dense.empty:
        value = float(dense[score].iloc[0])
        fig.add_hline(y=value, line_dash="dot", line_color="grey", annotation_text=f"dense {value:.4g}")
    return fig


def metric_title(run: RunData, column: str) -> str:
    """An axis title for a stored metric: its stored description, with its unit."""
    metric = (run.meta.get("metrics") or {}).get(column) or {}
    description, unit = metric.get("description") or column, metric.get("unit")
    return f"{description} ({unit})" if unit else str(description)


def curves_figure(ok: pd.DataFrame, metric: str, title: str, y_title: str) -> go.Figure:
    """One line per run: ``metric`` at each evaluation step; colour = family, dash = rho."""
    fig = go.Figure()
    rhos = sorted(ok["rho"].unique())
    for _, row in ok.sort_values(["family", "rho"]).iterrows():
        curves = row["curves"]
        if not isinstance(curves, dict) or metric not in curves:
            continue
        fig.add_trace(go.Scatter(
            x=curves["step"], y=curves[metric], mode="lines+markers", name=f"{row['family']} rho={row['rho']:g}",
            line={"color": family_color(row["family"]), "dash": DASHES[rhos.index(row["rho"]) % len(DASHES)]},
            legendgroup=row["family"]))
    fig.update_layout(title=title, xaxis_title="optimizer step", yaxis_title=y_title, template="plotly_white", height=460)
    return fig


def budget_table(ok: pd.DataFrame, score: str) -> pd.DataFrame:
    """Family x rho: the score and the whole model's MACs ratio of each run, side by side."""
    wide = ok.pivot_table(index="family", columns="rho", values=[score, "model_macs_ratio"], aggfunc="first")
    columns = [(metric, rho) for rho in sorted(ok["rho"].unique()) for metric in (score, "model_macs_ratio")
               if (metric, rho) in wide.columns]
    wide = wide[columns]
    wide.columns = [f"{'MACs ratio' if metric == 'model_macs_ratio' else metric} @{rho:g}" for metric, rho in columns]
    return wide.reset_index()


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
    ok = frame[frame["status"] == "ok"].copy() if "status" in frame else frame
    sections: list[Section] = []
    if not ok.empty:
        dense = ok[ok["family"] == "dense"]
        better = "higher" if higher_is_better else "lower"
        ok["label"] = ok["family"] + " rho=" + ok["rho"].astype(str)
        score_title = metric_title(run, score)
        sections.append(Section(
            f"{score} against the whole model's MACs",
            f"model_macs_ratio: fvcore multiply-adds of one forward of the whole model (attention matmuls, "
            f"embeddings, norms and head included) over the dense model's. Dashed: each family's Pareto "
            f"front (no cheaper run is {better}); dotted: the dense reference. rho budgets the replaced "
            f"block linears' parameters (rho_actual: what they kept after training); macs_ratio is their "
            f"MACs over dense's, above 1 where a family costs more compute than dense at that parameter budget.",
            figures=[_with_reference(scatter_by_family(ok, "model_macs_ratio", score, text="label", pareto=True,
                                                       higher_is_better=higher_is_better,
                                                       title=f"{score} vs whole-model MACs / dense",
                                                       x_title="whole-model MACs / dense model's", y_title=score_title),
                                     dense, score),
                     _with_reference(scatter_by_family(ok, "params", score, text="label", log_x=True,
                                                       title=f"{score} vs trainable parameters",
                                                       x_title="trainable parameters", y_title=score_title), dense, score)],
        ))
        sections.append(Section(
            "Training curves",
            "Evaluated at evenly spaced steps; training loss is the mean over the steps since the previous point.",
            figures=[*(curves_figure(ok, m, f"{m} during training", metric_title(run, m)) for m in curve_metrics),
                     curves_figure(ok, "train_loss", "train_loss during training",
                                   "training loss (mean over the steps since the previous point)")],
        ))
        columns = [c for c in ["family", "rho", score, *SUMMARY[2:]] if c in ok.columns]
        table = ok.sort_values(["family", "rho"])[columns]
        sections.append(Section(
            f"{score} and MACs ratio by family and budget",
            "One row per family, one column pair per budget rho (dense: its single run at rho 1).",
            tables=[budget_table(ok, score)]))
        sections.append(Section("All runs", tables=[table]))
    bad = frame[frame["status"] != "ok"] if "status" in frame else frame.iloc[0:0]
    if not bad.empty:
        sections.append(Section("Skipped and failed runs", "A family with no structure at a budget on these layer "
                                "shapes is skipped with its reason.", tables=[bad[["family", "rho", "status", "reason"]]]))
    return sections


def summary(run: RunData) -> pd.DataFrame:
    """The terminal's headline: the score and the MACs ratio per family and budget."""
    frame = run.frame()
    ok = frame[frame["status"] == "ok"] if "status" in frame else frame
    headline = run.schema.get("headline") or []
    return budget_table(ok, headline[0]) if headline and not ok.empty else pd.DataFrame()

