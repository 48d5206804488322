"""Report sections of the kernels suite: a summary, latency / speedup / efficiency per
shape, a roofline view and sortable tables, all from stored rows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from structbench.report.html import Section
from structbench.report.plots import family_rank, heatmap, lines_by_family, scatter_by_family
from structbench.report.tables import geomean
from structbench.results import RunData
from structbench.stats import geomean_of_medians, quartiles

SUMMARY = ["family", "shape", "rho", "rho_actual", "tokens", "mode", "median_s", "iqr_s", "runs", "dense_median_s",
           "speedup", "ideal_speedup", "efficiency", "products_efficiency", "products_share", "gflops", "macs", "macs_fvcore", "macs_agree", "param_bytes", "peak_mem_bytes", "noisy"]


def _with_quartiles(ok: pd.DataFrame) -> pd.DataFrame:
    """Latency quartiles from the raw samples: the band drawn around each median."""
    bands = [quartiles(list(s)) for s in ok["samples_s"]]
    return ok.assign(q1_s=[q[0] for q in bands], q3_s=[q[1] for q in bands])


def _tick_tokens(fig: go.Figure, tokens: list[int]) -> go.Figure:
    """Label the log token axis at the measured token counts, not at 2, 3, 4, ..."""
    return fig.update_xaxes(tickvals=tokens, ticktext=[str(t) for t in tokens])


TOKENS = "tokens per forward (rows of the input)"
EFFICIENCY = {"efficiency": "efficiency", "products_efficiency": "efficiency of the products"}


def _shape_figures(part: pd.DataFrame, label: str) -> list[go.Figure]:
    tokens = sorted(part["tokens"].unique().tolist())
    figs = [
        lines_by_family(part, "tokens", "median_s", band=("q1_s", "q3_s"), log_x=True, log_y=True,
                        title=f"{label}: forward latency (median, quartile band)", x_title=TOKENS,
                        y_title="seconds per forward"),
        lines_by_family(part, "tokens", "speedup", log_x=True, log_y=True, reference=1.0, x_title=TOKENS,
                        title=f"{label}: speedup over dense nn.Linear", y_title="speedup (dense median / family median)"),
        lines_by_family(part, "tokens", "efficiency", log_x=True, log_y=True, reference=1.0, x_title=TOKENS,
                        title=f"{label}: efficiency (1 = as fast as its MACs promise)",
                        y_title="efficiency (speedup / ideal speedup)"),
    ]
    return [_tick_tokens(fig, tokens) for fig in figs]


def family_table(ok: pd.DataFrame) -> pd.DataFrame:
    """Geometric means over shapes and tokens (ratios average multiplicatively): one number per
    family, rho and mode."""
    groups = ok.groupby(["family", "rho", "mode"], sort=False)
    table = groups.agg(cases=("speedup", "size"), rho_actual=("rho_actual", "mean")).reset_index()
    for col in ("speedup", "ideal_speedup", "efficiency"):
        table[f"geomean_{col}"] = groups[col].apply(geomean).to_numpy()
    if "samples_s" in ok:  # the rounds each speedup is the median of
        intervals = [geomean_of_medians([[d / f for d, f in zip(dense, fam)]
                                         for dense, fam in zip(part["dense_samples_s"], part["samples_s"])])
                     for _, part in groups]
        table["geomean_speedup_low"] = [i.low for i in intervals]
        table["geomean_speedup_high"] = [i.high for i in intervals]
    table["min_efficiency"] = groups["efficiency"].min().to_numpy()
    if "products_efficiency" in ok:  # CPU eager rows only; a mean over the rows that have it
        table["geomean_products_efficiency"] = groups["products_efficiency"].apply(lambda v: geomean(v.dropna())).to_numpy()
    table["noisy_cases"] = groups["noisy"].sum().to_numpy()
    return table.sort_values(["mode", "rho", "family"], key=lambda c: c.map(_family_rank) if c.name == "family" else c)


def _efficiency_map(ok: pd.DataFrame, column: str, title: str) -> go.Figure:
    cells = ok.assign(row=ok["family"] + " rho=" + ok["rho"].astype(str) + (" " + ok["mode"] if ok["mode"].nunique() > 1 else ""))
    cells = cells.groupby(["row", "shape"], sort=False)[column].apply(geomean).reset_index()
    return _log_colors(heatmap(cells, "row", "shape", column, value_title=EFFICIENCY[column], row_order=sorted(cells["row"].unique(), key=lambda r: (_family_rank(r), r)),
                               title=title))


def _summary(ok: pd.DataFrame) -> Section:
    figures = [_efficiency_map(ok, "efficiency", "efficiency by family and shape (geometric mean over tokens; 1 = ideal)")]
    profiled = ok[ok["products_efficiency"].notna()] if "products_efficiency" in ok else ok.iloc[0:0]
    if not profiled.empty:
        figures.append(_efficiency_map(profiled, "products_efficiency",
                                       "ceiling: efficiency of the matrix products alone (CPU eager; geometric mean over tokens)"))
    return Section(
        "Summary",
        "Speedup = dense nn.Linear median / family median, timed interleaved in one process; ideal = dense MACs / "
        "family MACs; efficiency = speedup / ideal. Means over shapes and tokens are geometric. The ceiling "
        "(products_efficiency = efficiency / products_share) is what the same forward would reach if everything but "
        "its matrix products cost nothing: where it is low too, the products' shapes are the limit, not the copies.",
        figures=figures, tables=[family_table(ok)],
    )


def compile_vs_eager(ok: pd.DataFrame) -> pd.DataFrame:
    """Per case measured in both modes, the compiled forward's median over the eager one's
    (> 1: ``torch.compile`` made it slower), for the family and for its dense baseline,
    slowest first: where compiling loses, the report says so instead of showing only the
    mode that wins."""
    keys = ["family", "shape", "rho", "tokens"]
    both = ok[ok["mode"].isin(["eager", "compile"])]
    if both.empty:
        return pd.DataFrame()
    table = both.pivot_table(index=keys, columns="mode", values=["median_s", "dense_median_s"], aggfunc="first")
    if "compile" not in table["median_s"] or "eager" not in table["median_s"]:
        return pd.DataFrame()
    table = table.dropna()
    out = pd.DataFrame({
        "eager_median_s": table[("median_s", "eager")], "compile_median_s": table[("median_s", "compile")],
        "compile_over_eager": table[("median_s", "compile")] / table[("median_s", "eager")],
        "dense_compile_over_eager": table[("dense_median_s", "compile")] / table[("dense_median_s", "eager")],
    }).reset_index()
    return out.sort_values("compile_over_eager", ascending=False, ignore_index=True)


def _compile_section(ok: pd.DataFrame) -> Section | None:
    table = compile_vs_eager(ok)
    if table.empty:
        return None
    losses = table[table["compile_over_eager"] > 1.0]
    return Section(
        "torch.compile against eager",
        f"torch.compile made the family's forward slower than eager in {len(losses)} of {len(table)} cases "
        f"(compile_over_eager > 1, listed first); dense_compile_over_eager is the same ratio for nn.Linear.",
        tables=[table],
    )


def _log_colors(fig: go.Figure) -> go.Figure:
    """Colour a ratio heatmap by log10 on a diverging scale centred at 1, so that x0.5 and
    x2 look equally far from ideal; the cell texts keep the ratios themselves."""
    trace = fig.data[0]
    z = np.log10(np.asarray(trace.z, dtype=float))
    span = max(1.0, float(np.nanmax(np.abs(z)))) if np.isfinite(z).any() else 1.0
    ticks = [t for t in range(-int(np.ceil(span)), int(np.ceil(span)) + 1)]
    trace.update(z=z, colorscale="RdBu", zmid=0, zmin=-span, zmax=span,
                 text=[["" if t == "nan" else t for t in row] for row in trace.text],
                 colorbar={"title": trace.colorbar.title.text, "tickvals": ticks, "ticktext": [f"{10.0**t:g}" for t in ticks]})
    # room for the colour bar and the title even with a single row; first row on top
    fig.update_yaxes(autorange="reversed")
    return fig.update_layout(height=max(300, 150 + 36 * len(trace.y)), margin={"t": 60, "b": 50})


def _family_rank(label: str) -> tuple[int, str]:
    """Position of a family (or a "family rho=..." label) in the order every plot uses."""
    return family_rank(str(label).split(" ")[0])


def kernels_report(run: RunData) -> list[Section]:
    frame = run.frame()
    ok = frame[frame["status"] == "ok"] if "status" in frame else frame
    sections: list[Section] = []
    if not ok.empty:
        ok = _with_quartiles(ok)
        sections.append(_summary(ok))
        several_modes = ok["mode"].nunique() > 1
        dense = ok[ok["family"] == "dense"]
        structured = ok[ok["family"] != "dense"]
        for (mode, shape, rho), part in (structured if not structured.empty else ok).groupby(["mode", "shape", "rho"], sort=False):
            baseline = dense[(dense["shape"] == shape) & (dense["mode"] == mode)]
            part = pd.concat([part, baseline]) if not structured.empty else part
            label = f"{shape} rho={rho}" + (f" [{mode}]" if several_modes else "")
            sections.append(Section(label, figures=_shape_figures(part, label)))
        compiled = _compile_section(ok)
        if compiled is not None:
            sections.append(compiled)
        sections.append(Section(
            "Roofline view",
            "Arithmetic intensity (2 x MACs per byte of parameters, input and output) against achieved GFLOP/s, "
            "one point per case (hover for the shape); points further up use the hardware better.",
            figures=[scatter_by_family(ok, "intensity", "gflops", text="shape", log_x=True, log_y=True,
                                       title="achieved GFLOP/s vs arithmetic intensity",
                                       x_title="arithmetic intensity (FLOP per byte moved)", y_title="achieved GFLOP/s")],
        ))
        sections.append(Section("All measured cases", "Click a column header to sort.",
                                tables=[ok[[c for c in SUMMARY if c in ok.columns]]]))
    bad = frame[frame["status"] != "ok"] if "status" in frame else frame.iloc[0:0]
    if not bad.empty:
        sections.append(Section("Skipped and failed cases",
                                tables=[bad[["family", "shape", "rho", "tokens", "mode", "status", "reason"]]]))
    return sections


def summary(run: RunData) -> pd.DataFrame:
    """The terminal's headline: geomean speedup and efficiency per family, rho and mode."""
    frame = run.frame()
    ok = frame[frame["status"] == "ok"]
    table = family_table(ok) if not ok.empty else pd.DataFrame()
    return table[[c for c in ("family", "rho", "mode", "cases", "geomean_speedup", "geomean_speedup_low",
                              "geomean_speedup_high", "geomean_efficiency", "noisy_cases")
                  if c in table]]


EFFICIENCY_CELLS = {"rho": 0.5, "shapes": ("square-1024", "square-4096"), "tokens": (16, 128, 512)}
FLOOR_CELL = {"rho": 0.5, "shape": "smollm2-q", "tokens": 1}


def _eager_ok(run: RunData) -> pd.DataFrame:
    frame = run.frame()
    if frame.empty or "status" not in frame:
        return frame
    return frame[(frame["status"] == "ok") & (frame["mode"] == "eager")]


def _ranked(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(_rank=frame["family"].map(lambda f: family_rank(f)[0])).sort_values("_rank").drop(columns="_rank")


def efficiency_cells(run: RunData) -> pd.DataFrame:
    """Efficiency (speedup / ideal speedup) with its 95 % interval (the speedup's, over the
    fixed ideal) per family at rho 0.5 (dense: the control) on the two square shapes at 16, 128
    and 512 tokens, eager."""
    ok = _eager_ok(run)
    if ok.empty:
        return pd.DataFrame()
    cells = ok[ok["shape"].isin(EFFICIENCY_CELLS["shapes"]) & ok["tokens"].isin(EFFICIENCY_CELLS["tokens"])
               & ((ok["rho"] == EFFICIENCY_CELLS["rho"]) | (ok["family"] == "dense"))]
    lines: dict[str, dict[str, str]] = {}
    for row in _ranked(cells).to_dict("records"):
        ideal = row["ideal_speedup"]
        lines.setdefault(row["family"], {"family": row["family"]})[f"{row['shape']} @{row['tokens']}"] = (
            f"{row['efficiency']:.3g} [{row['speedup_low'] / ideal:.3g}, {row['speedup_high'] / ideal:.3g}]")
    columns = [f"{shape} @{tokens}" for shape in EFFICIENCY_CELLS["shapes"] for tokens in EFFICIENCY_CELLS["tokens"]]
    return pd.DataFrame(list(lines.values())).reindex(columns=["family", *columns])


def floor_cells(run: RunData) -> pd.DataFrame:
    """One token through SmolLM2's 576x576 at rho 0.5, eager: each family's median latency
    against ``nn.Linear``'s, and the speedup with its 95 % interval: what a forward costs when
    there is almost no work."""
    ok = _eager_ok(run)
    if ok.empty:
        return pd.DataFrame()
    cell = ok[(ok["shape"] == FLOOR_CELL["shape"]) & (ok["tokens"] == FLOOR_CELL["tokens"])
              & ((ok["rho"] == FLOOR_CELL["rho"]) | (ok["family"] == "dense"))]
    return pd.DataFrame([{"family": r["family"], "median_us": 1e6 * r["median_s"],
                          "dense_median_us": 1e6 * r["dense_median_s"], "speedup": r["speedup"],
                          "speedup_low": r["speedup_low"], "speedup_high": r["speedup_high"]}
                         for r in _ranked(cell).to_dict("records")])


REPORTS = {"kernels": kernels_report}
SUMMARIES = {"kernels": summary}
TABLES = {"kernels": {"headline": summary, "efficiency": efficiency_cells, "floor": floor_cells}}
