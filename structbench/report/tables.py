"""Markdown and CSV tables; numbers are rounded only here, when rendering."""
from __future__ import annotations

import json
from typing import Any

import pandas as pd

from structbench.results import RunData

# Columns too bulky for a table: raw samples and nested structures stay in the JSON.
HIDDEN = {"samples_s", "dense_samples_s", "case_key", "unsupported_ops", "errors", "min_run_time", "rounds"}


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return value


def display_frame(frame: pd.DataFrame, metrics: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """Visible columns, rendered cells, and metric headers with an arrow for the better way."""
    columns = [c for c in frame.columns if c not in HIDDEN and c != "reason"] + (["reason"] if "reason" in frame else [])
    shown = frame[columns]
    shown = shown.map(_cell) if hasattr(shown, "map") else shown.applymap(_cell)
    metrics = metrics or {}

    def header(col: str) -> str:
        better = metrics.get(col, {}).get("higher_is_better")
        return f"{col} {'↑' if better else '↓'}" if better is not None else col

    return shown.rename(columns={c: header(c) for c in shown.columns})


def markdown(frame: pd.DataFrame, metrics: dict[str, dict[str, Any]] | None = None) -> str:
    return display_frame(frame, metrics).to_markdown(index=False)


def write_tables(run: RunData) -> None:
    frame = run.frame()
    if frame.empty:
        return
    frame.drop(columns=[c for c in HIDDEN if c in frame.columns]).to_csv(run.run_dir / "table.csv", index=False)
    (run.run_dir / "table.md").write_text(
        f"# {run.suite} run {run.run_dir.name}\n\n{markdown(frame, run.meta.get('metrics'))}\n"
    )
