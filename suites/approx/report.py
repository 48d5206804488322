"""Report sections of the approx suite, built from stored rows only.

Who captures what (heat maps and curves over the synthetic kinds), how each family
compresses real trained weights (curves and tables per layer type), what the
projections cost, and BLAST's GD-vs-PrecGD convergence with PrecGD's knobs.
Errors are means over sizes, seeds or layers; bands span their min..max.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from structbench.report.html import Section
from structbench.report.plots import PALETTE, family_rank, heatmap, lines_by_family, sorted_families
from structbench.results import RunData

TABLE_RHOS = (0.2, 0.5)  # the real-weights tables and heat maps; every rho is in the curves
LOG_FLOOR = 1e-8  # float32 round-off of an exact projection; drawn at this floor on log axes
METHOD_COLORS = {"precgd": PALETTE[0], "gd": PALETTE[1]}
DIVERGED = 10.0  # where a diverged run is drawn on a log error axis
KEPT = "kept fraction of the parameters (rho_actual)"
REL_ERROR = "relative Frobenius error"
WEIGHTED_ERROR = "activation-weighted error"
KNOBS = {"delta0": "PrecGD damping delta0 (relative to the residual)", "steps": "PrecGD iterations"}


def _about(run: RunData, what: str) -> dict:
    """The run's stored facts of its sources (``about`` in run.json); empty for a run stored
    without them, whose report then names kinds and models without describing them."""
    about = run.meta.get("about")
    return (about.get(what) or {}) if isinstance(about, dict) else {}


def approx_report(run: RunData) -> list[Section]:
    frame = run.frame()
    if "experiment" not in frame:
        return [Section("No approx rows", tables=[frame])]
    ok = frame[frame["status"] == "ok"]
    proj = _with_shape(ok[ok["experiment"] == "projection"])
    synthetic = proj[proj["source"] == "synthetic"]
    real = proj[proj["source"] != "synthetic"]
    sections = [_notes(run, frame)]
    sections += _synthetic_sections(synthetic, _about(run, "kinds"))
    sections += _real_sections(real, _about(run, "models"))
    sections += _convergence_sections(ok)
    sections += _cost_sections(proj)  # ends with the long table of every projection group
    bad = frame[frame["status"] != "ok"]
    if not bad.empty:
        cols = [c for c in ("experiment", "source", "matrix", "family", "status", "reason") if c in bad]
        counted = bad.fillna({"reason": ""}).groupby(cols, dropna=False).size().reset_index(name="cases")
        sections.append(Section("Skipped and failed cases", "A skipped row is a shape or rho the family cannot "
                                "take, with the family's own reason; it is why a curve may lack a point.",
                                tables=[counted]))
    return sections


# ---- helpers -------------------------------------------------------------------------
def _with_shape(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    if not frame.empty:
        frame["shape"] = frame["out_features"].astype(int).astype(str) + "x" + frame["in_features"].astype(int).astype(str)
        frame["rel_error"] = frame["rel_error"].astype(float)
        # One source matrix: a synthetic (kind, shape, seed) or a real (model, layer, type); tables count these.
        which = [c for c in ("source", "matrix", "shape", "seed", "layer") if c in frame]
        frame["instance"] = frame[which].apply(lambda col: col.map(str)).agg(" ".join, axis=1)
    return frame


def _by_family_and_rho(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean error over the group (sizes, seeds or layers), its min and max, mean rho_actual."""
    return (
        frame.groupby(["family", "rho"], sort=False)
        .agg(rel_error=("rel_error", "mean"), low=("rel_error", "min"), high=("rel_error", "max"),
             rho_actual=("rho_actual", "mean"), seconds=("seconds", "mean"), n=("rel_error", "size"))
        .reset_index()
    )


def _family_sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("family", key=lambda s: s.map(family_rank), kind="stable")


def _error_curves(frame: pd.DataFrame, title: str, log_y: bool) -> go.Figure:
    agg = _family_sorted(_by_family_and_rho(frame))
    if log_y:
        agg[["rel_error", "low", "high"]] = agg[["rel_error", "low", "high"]].clip(lower=LOG_FLOOR)
    return lines_by_family(agg, "rho_actual", "rel_error", band=("low", "high"), log_y=log_y, title=title,
                           x_title=KEPT, y_title=REL_ERROR)


def _cell(error: float, rho_actual: float) -> str:
    return f"{error:.3f} (ρ {rho_actual:.2f})"


def _error_table(frame: pd.DataFrame, row: str, rho: float, label: str, column: str = "rel_error") -> pd.DataFrame:
    """Mean error (``column``) per ``row`` value x family at target ``rho``, each cell with its
    mean rho_actual, the best family per row and how many source matrices each mean covers."""
    part = frame[frame["rho"] == rho]
    agg = part.groupby([row, "family"], sort=False).agg(
        rel_error=(column, "mean"), rho_actual=("rho_actual", "mean")).reset_index()
    agg["cell"] = [_cell(e, r) for e, r in zip(agg["rel_error"], agg["rho_actual"])]
    table = agg.pivot(index=row, columns="family", values="cell")
    families = sorted_families(table.columns)
    table = table.reindex(index=list(dict.fromkeys(part[row])), columns=families).fillna("-")
    table["best"] = agg.loc[agg.groupby(row, sort=False)["rel_error"].idxmin()].set_index(row)["family"]
    table["matrices"] = part.groupby(row, sort=False)["instance"].nunique()
    table.columns.name = None
    return table.rename_axis(label).reset_index()


def _present(rhos: pd.Series) -> list[float]:
    wanted = [r for r in TABLE_RHOS if (rhos == r).any()]
    return wanted or sorted(rhos.unique())[len(rhos.unique()) // 2:][:1]


# ---- sections ------------------------------------------------------------------------
def _notes(run: RunData, frame: pd.DataFrame) -> Section:
    lines = ["Relative Frobenius error ||W - What||_F / ||W||_F of each family's from_dense at a target rho; "
             "rho_actual (the fraction of the dense parameters the chosen structure keeps, always <= rho) is "
             "shown beside every error, and curves are drawn against it."]
    notes = _about(run, "models")
    models = [m for m in notes if "source" in frame and (frame["source"] == m).any()]
    lines += [f"{m}: {notes[m]}." for m in models]
    options: dict[str, list[str]] = {}
    if "options" in frame:  # a run of the convergence experiment alone has no projection rows
        proj = frame[frame["experiment"] == "projection"]
        options = {f: sorted(set(o)) for f, o in proj.groupby("family")["options"] if set(o) != {"{}"}}
    if options:
        lines.append("NOT the families' default projection budgets: " + "; ".join(
            f"{f} {', '.join(o)}" for f, o in options.items()) + " (a --quick run trades accuracy for time, so "
            "these families' errors are upper bounds of what their default projection reaches).")
    else:
        lines.append("Every family projects with its default options (matrices/<family>.py).")
    return Section("About this run", " ".join(lines))


def _synthetic_sections(frame: pd.DataFrame, known: dict[str, dict]) -> list[Section]:
    if frame.empty:
        return []
    present = list(dict.fromkeys(frame["matrix"]))
    order = [k for k in known if k in present] + [k for k in present if k not in known]  # a kind unknown here: last
    homes = ", ".join(f"{k} -> {known[k]['family']}" for k in order if known.get(k, {}).get("family"))
    maps = [heatmap(frame[frame["rho"] == rho], "family", "matrix", "rel_error", value_title=REL_ERROR,
                    row_order=sorted_families(frame["family"]),
                    col_order=order, title=f"mean relative error at rho {rho}: families x synthetic kinds")
            .update_yaxes(autorange="reversed") for rho in _present(frame["rho"])]
    tables = [_error_table(frame, "matrix", rho, f"kind (rho {rho})") for rho in _present(frame["rho"])]
    sizes = ", ".join(sorted(frame["shape"].unique()))
    who = Section(
        "Who captures what: synthetic matrices",
        f"Each structured kind is a random member of one family ({homes}), so that family should sit near "
        f"zero on its own kind at a matching rho; gaussian has no structure and powerlaw has a decaying "
        f"spectrum. Means over sizes {sizes} and {frame['seed'].nunique()} seed(s).",
        figures=maps, tables=tables,
    )
    curves = Section(
        "Error vs rho per synthetic kind",
        f"One line per family (mean over sizes and seeds, band: min..max); log scale, errors below "
        f"{LOG_FLOOR:g} drawn at {LOG_FLOOR:g}.",
        figures=[_error_curves(frame[frame["matrix"] == k], f"{k}: {known.get(k, {}).get('description', k)}", log_y=True)
                 for k in order],
    )
    return [who, curves]


def _real_sections(frame: pd.DataFrame, notes: dict[str, str]) -> list[Section]:
    sections = []
    objective = frame["objective"].fillna("frobenius") if "objective" in frame else pd.Series("frobenius", frame.index)
    for model, part in frame[objective == "frobenius"].groupby("source", sort=False):
        types = list(dict.fromkeys(part["matrix"]))
        layers = sorted(part["layer"].dropna().astype(int).unique())
        shapes = part.drop_duplicates("matrix").set_index("matrix")["shape"]
        note = notes.get(model, "")
        tables = [_error_table(part, "matrix", rho, f"layer type (rho {rho})") for rho in _present(part["rho"])]
        figures = [_error_curves(part[part["matrix"] == t], f"{model} {t} ({shapes[t]}, {len(layers)} layers)",
                                 log_y=False) for t in types]
        sections.append(Section(
            f"Real weights: {model}",
            f"{note}. Layers {_ranges(layers)}; mean relative error per layer type over those layers, "
            f"mean rho_actual in brackets, and the best family per row. Curves: one line per family, "
            f"band min..max over layers.",
            figures=figures, tables=tables,
        ))
        weighted = frame[frame["source"] == model]
        weighted = weighted[weighted["weighted_error"].notna()] if "weighted_error" in weighted else weighted.iloc[0:0]
        if not weighted.empty:
            sections.append(_weighted_section(model, weighted.assign(objective=objective), types))
    return sections


def _weighted_section(model: str, part: pd.DataFrame, types: list[str]) -> Section:
    """Activation-weighted error per layer type, family and objective: what each projection
    does to the layer's outputs on real text, the quantity that decides a compressed model."""
    part = part.assign(weighted_error=part["weighted_error"].astype(float))
    objectives = [o for o in ("frobenius", "calibrated") if (part["objective"] == o).any()]
    tables, figures = [], []
    for rho in _present(part["rho"]):
        for obj in objectives:
            here = part[part["objective"] == obj]
            tables.append(_error_table(here, "matrix", rho, f"layer type (rho {rho}, {obj} objective)",
                                       column="weighted_error"))
            figures.append(heatmap(here[here["rho"] == rho], "family", "matrix", "weighted_error", value_title=WEIGHTED_ERROR,
                                   row_order=sorted_families(here["family"]), col_order=types,
                                   title=f"mean activation-weighted error at rho {rho}, {obj} objective")
                           .update_yaxes(autorange="reversed"))
    return Section(
        f"Real weights: {model}, activation-weighted error",
        "||(W - What) X||_F / ||W X||_F with X the layer's inputs in the dense model over calibration text "
        "(Wikipedia train split), mean over layers. frobenius: the projection minimised ||W - What||_F; "
        "calibrated: it minimised this error itself (from_dense(W, gram=X X^T / N)). The Frobenius error of "
        "a calibrated fit can be larger: it spends its budget on the directions the inputs use.",
        figures=figures, tables=tables)


def _ranges(values: list[int]) -> str:
    if values and values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}..{values[-1]}"
    return ", ".join(map(str, values))


def _cost_sections(frame: pd.DataFrame) -> list[Section]:
    if frame.empty:
        return []
    seconds = frame.pivot_table(index="shape", columns="family", values="seconds", aggfunc="mean")
    seconds = seconds[sorted_families(seconds.columns)]
    seconds.columns.name = None
    seconds["matrices"] = frame.groupby("shape")["instance"].nunique()
    order = frame.drop_duplicates("shape").assign(size=lambda d: d["out_features"] * d["in_features"])
    seconds = seconds.reindex(order.sort_values("size")["shape"]).reset_index()
    summary = (frame.groupby(["source", "matrix", "shape", "family", "rho"], sort=False)
               .agg(rel_error=("rel_error", "mean"), rho_actual=("rho_actual", "mean"),
                    seconds=("seconds", "mean"), params=("params", "first"), hparams=("hparams", "first"),
                    n=("rel_error", "size")).reset_index())
    return [
        Section("Projection cost",
                "Mean wall time of one from_dense (seconds) per shape and family, over rhos and matrices, with "
                "the run's threads. Iterative projections (blast PrecGD, gaudi Adam, pixelfly alternating SVD) "
                "dominate; the closed-form ones (lowrank, blockdiag, monarch) are SVDs or slicing.",
                tables=[seconds]),
        Section("All projections (means over layers, sizes and seeds)",
                "Every (source, matrix, family, rho) group; the per-row data with hparams are in table.csv.",
                tables=[summary]),
    ]


def _convergence_sections(frame: pd.DataFrame) -> list[Section]:
    conv = frame[frame["experiment"] == "convergence"]
    if conv.empty:
        return []
    sections = []
    first = conv.iloc[0]
    target = (f"a random BLAST matrix {int(first['out_features'])}x{int(first['in_features'])}, "
              f"b={int(first['blocks'])}, r*={int(first['true_rank'])}")
    figures = []
    for rank, part in conv.groupby("rank", sort=True):
        regime = "r = r*" if rank == first["true_rank"] else ("r > r*" if rank > first["true_rank"] else "r < r*")
        fig = go.Figure()
        for (method, seed), run in part.groupby(["method", "seed"], sort=True):
            fig.add_trace(go.Scatter(
                x=run.iloc[0]["iterations"], y=run.iloc[0]["errors"], mode="lines", legendgroup=method,
                name=f"{method} (lr {run.iloc[0]['lr_used']:g})", showlegend=bool(seed == part["seed"].min()),
                line={"color": METHOD_COLORS.get(method), "width": 1.5}, hovertext=f"seed {seed}"))
        fig.update_layout(title=f"{regime} (r={int(rank)}): relative error per iteration, one line per seed",
                          xaxis_title="iteration", yaxis_title=REL_ERROR, template="plotly_white",
                          height=420)
        fig.update_yaxes(type="log")
        figures.append(fig)
    summary = _over_seeds(conv, ["rank", "method", "lr_used", "delta0", "steps"])
    sections.append(Section(
        "BLAST factorization: GD vs PrecGD",
        f"Target: {target}; every method starts from the same small random factors (seeded) and decays "
        f"its step linearly to 0. PrecGD preconditions each factor's gradient with its damped Gram matrix; "
        f"GD uses the step size in the table (see the GD step-size sweep below for how it was chosen).",
        figures=figures, tables=[summary],
    ))
    sections += _sweep_sections(frame)
    return sections


def _over_seeds(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Final error over seeds per ``keys``: mean, best and worst of the finite runs, and how
    many runs diverged (kept apart, so a mean never hides a blow-up)."""
    return (frame.groupby(keys, sort=True)
            .agg(final_error=("rel_error", "mean"), best_seed=("rel_error", "min"), worst_seed=("rel_error", "max"),
                 diverged=("diverged", "sum"), seeds=("seed", "size"), seconds=("seconds", "mean"))
            .reset_index())


def _sweep_sections(frame: pd.DataFrame) -> list[Section]:
    sections = []
    lr = frame[frame["experiment"] == "gd-lr"]
    if not lr.empty:
        table = _over_seeds(lr, ["rank", "lr"])
        fig = go.Figure()
        for rank, part in table.groupby("rank"):
            worst = part["worst_seed"].where(part["diverged"] == 0, DIVERGED)
            fig.add_trace(go.Scatter(x=part["lr"], y=worst, mode="lines+markers", name=f"r={int(rank)}"))
        fig.update_layout(title=f"GD: worst final error over seeds vs step size (diverged: drawn at {DIVERGED:g})",
                          xaxis_title="GD step size (lr)", yaxis_title="final relative Frobenius error",
                          template="plotly_white", height=380)
        fig.update_xaxes(type="log")
        fig.update_yaxes(type="log")
        stable = table[table["diverged"] == 0]
        largest = {int(k): v for k, v in stable.groupby("rank")["lr"].max().items()}
        sections.append(Section(
            "GD step-size sweep",
            "Plain GD is only a fair baseline at its best step: it runs at every lr of the sweep on every seed's "
            "target, and 'auto' uses the step with the lowest worst-seed error among those that diverge on no "
            f"seed. Largest step finite on every seed, per rank: {largest}.",
            figures=[fig], tables=[table]))
    delta = frame[frame["experiment"] == "precgd-delta0"]
    steps = frame[frame["experiment"] == "precgd-steps"]
    for part, knob, x, text in (
        (delta, "delta0", "delta0", "damping delta = delta0 ||A - Ahat||_F: too small and the solves amplify noise, "
                                    "too large and PrecGD degrades to slow GD; time barely moves"),
        (steps, "steps", "seconds", "more iterations buy error with time (the step decays linearly to 0 at the "
                                    "last iteration, whatever the count)"),
    ):
        if part.empty:
            continue
        table = _over_seeds(part, [knob, "rank"])
        fig = go.Figure(go.Scatter(x=table[x], y=table["final_error"], mode="lines+markers+text",
                                   text=[f"{knob}={v:g}" for v in table[knob]], textposition="top right",
                                   line={"color": METHOD_COLORS["precgd"]}, name="precgd"))
        fig.update_layout(title=f"PrecGD: final error vs {'time' if x == 'seconds' else knob} as {knob} varies "
                                f"(r={int(table['rank'].iloc[0])}, mean over seeds)",
                          xaxis_title="seconds per factorization" if x == "seconds" else KNOBS[knob],
                          yaxis_title="final relative Frobenius error", template="plotly_white", height=380)
        fig.update_xaxes(type="log")
        fig.update_yaxes(type="log")
        sections.append(Section(f"PrecGD {knob} sweep", f"Mean over seeds; {text}.", figures=[fig], tables=[table]))
    return sections


def summary(run: RunData) -> pd.DataFrame:
    """The terminal's headline: the best family (lowest mean error) per synthetic kind and per
    real layer type, at each rho and objective, with its error."""
    frame = run.frame()
    if frame.empty or "experiment" not in frame:
        return pd.DataFrame()
    ok = frame[(frame["status"] == "ok") & (frame["experiment"] == "projection")]
    if ok.empty:
        return pd.DataFrame()
    ok = ok.assign(source=ok["source"].where(ok["source"] == "synthetic", "real: " + ok["source"].astype(str)),
                   objective=ok["objective"].fillna("frobenius") if "objective" in ok else "frobenius")
    ok = ok.assign(error=ok["weighted_error"].where(ok["objective"] == "calibrated", ok["rel_error"])
                   if "weighted_error" in ok else ok["rel_error"])
    means = ok.groupby(["source", "matrix", "rho", "objective", "family"], sort=False)["error"].mean().reset_index()
    best = means.loc[means.groupby(["source", "matrix", "rho", "objective"], sort=False)["error"].idxmin()]
    return best.rename(columns={"family": "best family", "error": "its mean error"}).reset_index(drop=True)


REPORTS = {"approx": approx_report}
SUMMARIES = {"approx": summary}
TABLES = {"approx": {"headline": summary}}
