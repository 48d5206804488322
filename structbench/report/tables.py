"""Markdown and CSV tables; numbers are rounded only here, when rendering."""
from __future__ import annotations

import json
import math
from typing import Any, Iterable

import pandas as pd

from structbench.results import RunData

RUNNER_COLUMNS = ("case_key",)  # the runner's resume bookkeeping, meaningless to a reader


def _cell(value: Any) -> Any:
    """A shown cell: floats to 4 significant digits, a missing value (NaN, None) empty."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return value


def geomean(values: Iterable[float]) -> float:
    """Geometric mean: the average of ratios (speedups, slowdowns) that treats x2 and x0.5 alike."""
    logs = [math.log(v) for v in values]
    return math.exp(sum(logs) / len(logs)) if logs else float("nan")


def hidden_columns(frame: pd.DataFrame, declared: Iterable[str] = ()) -> set[str]:
    """Columns a table leaves out (they stay in ``rows.jsonl``): the runner's bookkeeping, the
    suite's declared ``Schema.hidden``, and any column holding lists (raw samples, curves)."""
    lists = {c for c in frame.columns if frame[c].map(lambda v: isinstance(v, list)).any()}
    return (set(RUNNER_COLUMNS) | set(declared) | lists) & set(frame.columns)


def display_frame(frame: pd.DataFrame, metrics: dict[str, dict[str, Any]] | None = None,
                  hidden: Iterable[str] = ()) -> pd.DataFrame:
    """Visible columns, rendered cells, and metric headers with an arrow for the better way."""
    drop = hidden_columns(frame, hidden)
    columns = [c for c in frame.columns if c not in drop and c != "reason"] + (["reason"] if "reason" in frame else [])
    shown = frame[columns]
    shown = shown.map(_cell) if hasattr(shown, "map") else shown.applymap(_cell)
    metrics = metrics or {}

    def header(col: str) -> str:
        better = metrics.get(col, {}).get("higher_is_better")
        return f"{col} {'↑' if better else '↓'}" if better is not None else col

    return shown.rename(columns={c: header(c) for c in shown.columns})


def markdown(frame: pd.DataFrame, metrics: dict[str, dict[str, Any]] | None = None, hidden: Iterable[str] = ()) -> str:
    """A markdown table; a missing value (a budget a family has no run at) is an empty cell."""
    return display_frame(frame, metrics, hidden).to_markdown(index=False, missingval="")


def split_constant(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Columns holding one value in every row, moved out of a table into a header line:
    a markdown table is read by people, and repeating ``dtype float32`` forty times is noise."""
    if len(frame) < 2:
        return frame, {}
    constant = {c: frame[c].iloc[0] for c in frame.columns if frame[c].astype(str).nunique() == 1}
    return frame.drop(columns=list(constant)), constant


def write_tables(run: RunData) -> None:
    """``table.csv`` (every column but the hidden ones, raw floats) and ``table.md`` (rounded,
    constant columns in a header line)."""
    frame = run.frame()
    if frame.empty:
        return
    frame = frame.drop(columns=sorted(hidden_columns(frame, run.schema.get("hidden", ()))))
    frame.to_csv(run.run_dir / "table.csv", index=False)
    varying, constant = split_constant(frame)
    same = ", ".join(f"{k}={_cell(v)}" for k, v in constant.items() if not (isinstance(v, float) and math.isnan(v)) and v is not None)
    (run.run_dir / "table.md").write_text(
        f"# {run.suite} run {run.run_dir.name}\n\n" + (f"Same in every row: {same}\n\n" if same else "")
        + f"{markdown(varying, run.meta.get('metrics'))}\n"
    )
