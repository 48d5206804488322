"""Report sections of the kernels suite: latency, speedup vs ideal, roofline, tables."""
from __future__ import annotations

import pandas as pd

from structbench.report.html import Section
from structbench.report.plots import lines_by_family, scatter_by_family
from structbench.results import RunData

SUMMARY = ["family", "shape", "rho", "rho_actual", "tokens", "mode", "median_s", "iqr_s", "runs", "dense_median_s",
           "speedup", "ideal_speedup", "efficiency", "gflops", "macs", "macs_fvcore", "param_bytes", "peak_mem_bytes", "noisy"]


def kernels_report(run: RunData) -> list[Section]:
    frame = run.frame()
    ok = frame[frame["status"] == "ok"].copy() if "status" in frame else frame
    sections: list[Section] = []
    if not ok.empty:
        ok["low"] = ok["median_s"] - ok["iqr_s"] / 2
        ok["high"] = ok["median_s"] + ok["iqr_s"] / 2
        ok["label"] = ok["family"] + " rho=" + ok["rho"].astype(str)
        for (shape, rho), part in ok.groupby(["shape", "rho"], sort=False):
            dense = ok[(ok["shape"] == shape) & (ok["family"] == "dense")]
            part = pd.concat([part, dense]) if rho != 1.0 else part
            figs = [
                lines_by_family(part, "tokens", "median_s", band=("low", "high"), log_x=True, log_y=True,
                                title=f"{shape} rho={rho}: forward latency (median, IQR band)", y_title="seconds"),
                lines_by_family(part, "tokens", "efficiency", log_x=True, reference=1.0,
                                title=f"{shape} rho={rho}: efficiency = speedup / ideal (1 = as fast as the MACs promise)"),
                lines_by_family(part, "tokens", "speedup", log_x=True, reference=1.0,
                                title=f"{shape} rho={rho}: speedup over dense (ideal for rho={rho}: about {1 / rho:.3g}x)"),
            ]
            sections.append(Section(f"{shape}, rho {rho}", figures=figs))
        sections.append(Section(
            "Roofline view",
            "Arithmetic intensity (2 x MACs per byte of parameters, input and output) against achieved GFLOP/s; "
            "points further up use the hardware better.",
            figures=[scatter_by_family(ok, "intensity", "gflops", text="shape", log_x=True, log_y=True,
                                       title="achieved GFLOP/s vs arithmetic intensity")],
        ))
        sections.append(Section("All measured cases", tables=[ok[[c for c in SUMMARY if c in ok.columns]]]))
    bad = frame[frame["status"] != "ok"] if "status" in frame else frame.iloc[0:0]
    if not bad.empty:
        sections.append(Section("Skipped and failed cases", tables=[bad[["family", "shape", "rho", "tokens", "status", "reason"]]]))
    return sections
