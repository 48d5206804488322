"""Plotly figure builders shared by every suite's report, one colour per family everywhere."""
from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd
import plotly.graph_objects as go

from structbench.families import family_order, get_family, list_families

PALETTE = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff", "#fecb52"]


def family_rank(family: str) -> tuple[int, str]:
    """Sort key of a family in tables and legends: its class's ``plot_order``; a name no
    registered family has (a row of a run made elsewhere) goes last."""
    return (get_family(family).plot_order if family in list_families() else 10**6, family)


def sorted_families(families: Iterable[str]) -> list[str]:
    return sorted(set(families), key=family_rank)


def family_color(family: str) -> str:
    """The family's declared ``plot_color``; otherwise a palette colour no registered family
    declares, the same for the same family in every figure."""
    declared = {name: get_family(name).plot_color for name in family_order()}
    if declared.get(family):
        return declared[family]
    free = [c for c in PALETTE if c not in declared.values()] or PALETTE
    undeclared = [name for name, color in declared.items() if not color]
    index = undeclared.index(family) if family in undeclared else len(undeclared) + sum(map(ord, family))
    return free[index % len(free)]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _axes(fig: go.Figure, title: str, x_title: str, y_title: str, log_x: bool, log_y: bool) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, template="plotly_white", height=420)
    fig.update_xaxes(type="log" if log_x else "linear")
    return fig.update_yaxes(type="log" if log_y else "linear")


def lines_by_family(
    frame: pd.DataFrame, x: str, y: str, *, title: str, x_title: str, y_title: str,
    band: tuple[str, str] | None = None, log_x: bool = False, log_y: bool = False, reference: float | None = None,
    link: str | None = None,
) -> go.Figure:
    """One line per family; ``band = (low_col, high_col)`` draws a shaded interval; a click on
    a point opens the relative address in the column ``link``. Axis titles are words with
    units: a reader does not know the columns."""
    fig = go.Figure()
    for family, part in frame.groupby("family", sort=False):
        part = part.sort_values(x)
        color = family_color(str(family))
        if band is not None:
            fig.add_trace(go.Scatter(x=list(part[x]) + list(part[x])[::-1], y=list(part[band[1]]) + list(part[band[0]])[::-1],
                                     fill="toself", fillcolor=_rgba(color, 0.15), line={"width": 0}, mode="lines",
                                     hoverinfo="skip", showlegend=False, legendgroup=str(family)))
        fig.add_trace(go.Scatter(x=part[x], y=part[y], mode="lines+markers", name=str(family),
                                 line={"color": color}, legendgroup=str(family),
                                 customdata=part[link] if link else None))
    if reference is not None:
        fig.add_hline(y=reference, line_dash="dot", line_color="grey")
    return _axes(fig, title, x_title, y_title, log_x, log_y)


def _error_bars(part: pd.DataFrame, value: str, band: tuple[str, str] | None) -> dict | None:
    """Plotly error bars from the interval columns ``band = (low, high)`` around ``value``."""
    if band is None:
        return None
    return {"type": "data", "symmetric": False, "array": (part[band[1]] - part[value]).tolist(),
            "arrayminus": (part[value] - part[band[0]]).tolist(), "thickness": 1.2}


def scatter_by_family(frame: pd.DataFrame, x: str, y: str, *, title: str, x_title: str, y_title: str,
                      text: str | None = None, log_x: bool = False, log_y: bool = False, pareto: bool = False,
                      higher_is_better: bool = True, hollow: str | None = None,
                      x_band: tuple[str, str] | None = None, y_band: tuple[str, str] | None = None,
                      link: str | None = None, overall_front: bool = False) -> go.Figure:
    """Points per family; with ``pareto`` each family's front (lower x, better y) is drawn,
    with ``overall_front`` the front over every family's points; the rows where the boolean
    column ``hollow`` holds are drawn as open markers (a flagged measurement: noisy, say);
    ``x_band`` / ``y_band`` name (low, high) columns drawn as error bars; a click on a point
    opens the relative address in the column ``link`` (``structbench.report.html``)."""
    fig = go.Figure()
    for family, part in frame.groupby("family", sort=False):
        color = family_color(str(family))
        marker = {"color": color, "size": 9}
        if hollow is not None:
            marker["symbol"] = ["circle-open" if pd.notna(flag) and bool(flag) else "circle" for flag in part[hollow]]
        fig.add_trace(go.Scatter(x=part[x], y=part[y], mode="markers", name=str(family), marker=marker,
                                 text=part[text] if text else None, legendgroup=str(family),
                                 customdata=part[link] if link else None,
                                 error_x=_error_bars(part, x, x_band), error_y=_error_bars(part, y, y_band)))
        if pareto:
            front = pareto_front(part, x, y, higher_is_better)
            fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines", line={"color": color, "dash": "dash"},
                                     showlegend=False, legendgroup=str(family)))
    if overall_front and not frame.empty:
        front = pareto_front(frame, x, y, higher_is_better)
        fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines", name="Pareto front, all families",
                                 line={"color": "black", "width": 1.5}))
    return _axes(fig, title, x_title, y_title, log_x, log_y)


def pareto_front(frame: pd.DataFrame, x: str, y: str, higher_is_better: bool = True) -> pd.DataFrame:
    """Points not dominated by any other with lower-or-equal cost ``x`` and a better ``y``."""
    ordered = frame.sort_values([x, y], ascending=[True, not higher_is_better])
    keep, best = [], None
    for idx, value in zip(ordered.index, ordered[y]):
        if best is None or (value > best if higher_is_better else value < best):
            keep.append(idx)
            best = value
    return ordered.loc[keep]


def heatmap(frame: pd.DataFrame, rows: str, cols: str, value: str, *, title: str, value_title: str,
            row_order: Sequence[str] | None = None, col_order: Sequence[str] | None = None) -> go.Figure:
    """Mean ``value`` per (row, column) cell, each cell labelled with its number; the colour
    bar is titled ``value_title``."""
    table = frame.pivot_table(index=rows, columns=cols, values=value, aggfunc="mean")
    if row_order is not None:
        table = table.reindex([r for r in row_order if r in table.index])
    if col_order is not None:
        table = table[[c for c in col_order if c in table.columns]]
    fig = go.Figure(go.Heatmap(z=table.values, x=[str(c) for c in table.columns], y=[str(r) for r in table.index],
                               colorscale="Viridis", text=[[f"{v:.3g}" for v in row] for row in table.values],
                               texttemplate="%{text}", colorbar={"title": value_title}))
    fig.update_layout(title=title, template="plotly_white", height=120 + 40 * len(table.index))
    return fig
