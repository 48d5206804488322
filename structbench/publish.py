"""The one publish step: a stored run becomes ``table.csv``, ``table.md`` and ``report.html``,
and the results root's ``index.html`` lists every run, the committed reference runs first.

It reads only what a run folder holds (``structbench.results``), so a report can be rebuilt
anywhere, and finds a run's report by the suite name stored in it among the suites'
``report.py`` modules (each maps the suites it renders in ``REPORTS``), never by importing
a suite's code: running and reporting meet only in the stored run.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

import pandas as pd

from structbench import regenerate
from structbench.errors import StructbenchError
from structbench.estimate import duration
from structbench.report.html import (PLOTLY_FILE, Link, Section, cases_done, ensure_plotly, families_run,
                                     reliability_text, render_page, run_header)
from structbench.report.tables import markdown, write_tables
from structbench.results import (PROJECT_ROOT, REFERENCE, ROWS_FILE, RunData, described, list_runs, load_run,
                                 results_root, shown_status)
from suites import reports, subtitles, summaries, tables
from suites import cross_model, which_structure


def generic_sections(run: RunData) -> list[Section]:
    """A run whose suite has no report here (a suite added elsewhere): its rows as one table."""
    frame = run.frame()
    return [Section("All rows", tables=[frame])] if not frame.empty else [Section("No rows yet")]


def run_report(run: RunData) -> Path:
    """Write ``report.html`` for one run from its stored rows (never re-measures)."""
    root = results_root(run.run_dir)
    ensure_plotly(root)
    render, subtitle = reports().get(run.suite), subtitles().get(run.suite)
    try:
        sections = render(run) if render is not None and run.rows else generic_sections(run)
        about = subtitle(run) if subtitle is not None else None
    except StructbenchError as err:  # a run this report cannot read (an older schema): its rows, and why
        sections, about = [Section(f"No {run.suite} report for this run", str(err)), *generic_sections(run)], None
    def href(path: Path) -> str:
        return Path(os.path.relpath(path, run.run_dir)).as_posix()

    page = render_page(f"{run.suite}: {run.run_dir.name}", run_header(run, about), sections,
                       href(root / PLOTLY_FILE), run.meta.get("metrics"), index_href=href(root / "index.html"))
    out = run.run_dir / "report.html"
    out.write_text(page)
    return out


def _run_rows(runs: list[RunData], root: Path) -> pd.DataFrame:
    """One line per run, linked to its report, with what a reader picks a run by: its suite,
    machine, status, reliability and families."""
    rows = []
    for run in runs:
        m = run.meta
        report = (run.run_dir / "report.html").relative_to(root)
        rows.append({
            "run": Link(run.run_dir.name, "/".join(quote(part) for part in report.parts)), "suite": run.suite,
            "device": m.get("env", {}).get("device_name"), "dtype": m.get("cli", {}).get("dtype"),
            "threads": m.get("env", {}).get("threads"),
            "quick": m.get("cli", {}).get("quick"), "date": m.get("started"),
            "commit": (m.get("git", {}).get("commit") or "")[:10] + ("*" if m.get("git", {}).get("dirty") else ""),
            "status": shown_status(run), "cases": f"{cases_done(run)}/{m.get('n_cases')}",
            "reliability": reliability_text(run), "families": ", ".join(families_run(run)), "rows": len(run.rows),
        })
    return pd.DataFrame(rows)


def index(root: str | Path) -> Path:
    """``<root>/index.html``: the reference runs stored with the repository (what the docs'
    tables come from), then the user's own runs, each newest first."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    reference, own = list_runs(root / REFERENCE), list_runs(root)
    sections = []
    if reference:
        sections.append(Section("Reference runs", f"Committed with structbench under {REFERENCE}/: every published "
                                "table in the README and docs/ is generated from these rows. Click a column to "
                                "sort, a run to open its report.", tables=[_run_rows(reference, root)]))
    if own:
        sections.append(Section("Your runs", "Every run stored here, newest first.", tables=[_run_rows(own, root)]))
    if not own:
        sections.append(Section("No runs of yours yet", "Try: python bench.py --suite kernels --quick"))
    pages = [(which_structure.PAGE, "Which structure? Every family across the reference runs"),
             (cross_model.PAGE, "Across models: do the rankings hold on a second LLM?")]
    links = " · ".join(f"<a href='{page}'>{text}</a>" for page, text in pages if (root / page).is_file())
    header = f"<p class='nav'>{links}</p>" if links else ""
    page = render_page("structbench results", header, sections, None)
    out = root / "index.html"
    out.write_text(page)
    return out


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def summary(run: RunData) -> str:
    """What the terminal shows at the end of a run: case counts by status (and how many were
    noisy), the reasons of skipped and failed cases grouped, and the suite's headline table."""
    frame = run.frame()
    if frame.empty:
        return f"{run.suite}: no rows"
    counts = frame["status"].value_counts()
    parts = [f"{counts.get(s, 0)} {s}" for s in ("ok", "skipped", "error")]
    if "noisy" in frame:
        parts.append(f"{int(frame['noisy'].fillna(False).astype(bool).sum())} noisy")
    lines = [f"{run.suite}: {len(frame)} rows: {', '.join(parts)}"]
    estimates, took = run.meta.get("estimates") or [], run.meta.get("session_s")
    if estimates and took is not None:
        said = "; ".join(("before the first case" if e["cases_run"] == 0 else f"after {e['cases_run']} of {e['of']} cases")
                         + f" {duration(e['total_s'])}" for e in estimates)
        lines.append(f"  this session took {duration(took)}; its estimated total was {said}")
    bad = frame[frame["status"] != "ok"]
    for (status, reason), group in bad.groupby(["status", bad["reason"].fillna("(no reason)")], sort=False):
        lines.append(f"  {status} x{len(group)}: {reason}")
    table = summaries().get(run.suite)
    headline = table(run) if table is not None else pd.DataFrame()
    if not headline.empty:
        lines.append("\n" + markdown(headline.head(40)))
        if len(headline) > 40:
            lines.append(f"({len(headline) - 40} more lines in table.md and report.html)")
    return "\n".join(lines)


def publish(run_dirs: Iterable[str | Path]) -> None:
    """Tables and report of each run, then the index of each results root they belong to;
    rows.jsonl lines left out of a run's tables (``RunData.problems``) are said in one warning
    per run."""
    roots = []
    for run_dir in run_dirs:
        run = load_run(run_dir)
        if run.problems:
            _warn(f"warning: {run.run_dir / ROWS_FILE}: left out of the tables {described(run.problems)}; "
                  f"'bench.py --resume {run.run_dir}' repairs the file")
        write_tables(run)
        run_report(run)
        if results_root(run.run_dir) not in roots:
            roots.append(results_root(run.run_dir))
    for root in roots:
        index(root)


def publish_reference(results: Path, docs_root: Path = PROJECT_ROOT) -> list[Path]:
    """Every derived artefact of the reference runs, from their stored rows alone: each run's
    tables and report, the "which structure" and cross-model pages across them, the index, and every table
    published in the README and docs/ (``structbench.regenerate``). Returns the markdown files
    whose tables changed."""
    publish(run.run_dir for run in list_runs(results / REFERENCE, warn=_warn))
    which_structure.write_page(results)
    cross_model.write_page(results)
    index(results)
    return regenerate.rewrite(results, tables(), docs_root)
