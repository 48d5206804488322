"""Every published figure is generated from a stored reference run, never typed.

A markdown file (README.md, ``docs/**/*.md``) holds a published table between two markers on
lines of their own::

    <!-- results:llama-compress:headline -->
    ... generated ...
    <!-- /results -->

``results:SUITE:TABLE`` names a suite and one of the tables its ``report.py`` publishes
(``TABLES``); what sits between the markers is that table of the suite's newest reference run
under ``results/reference/SUITE/`` at its default config (``SUITE@CONFIG``: at the suite's
config file ``CONFIG.yaml``; ``results.reference_key``), with a line naming the run, its
commit and its machine. The
``publish`` command rewrites every such block from the stored rows alone, and a test fails when
any block differs from what regeneration gives, so a figure in the docs always has its row.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from structbench.errors import StructbenchError
from structbench.report.tables import markdown
from structbench.results import PROJECT_ROOT, REFERENCE, RunData, reference_runs, rows_made_at, shown_status

Tables = dict[str, dict[str, Callable[[RunData], pd.DataFrame]]]
"""Suite name -> published table name -> the table of a stored run (``suites.tables()``)."""

BLOCK = re.compile(r"^<!-- results:(?P<suite>[a-z0-9_-]+(?:@[a-z0-9_.-]+)?):(?P<table>[a-z0-9_-]+) -->\n"
                   r"(?P<body>.*?)^<!-- /results -->$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    """One published table: where it is and what it shows."""

    path: Path
    suite: str  # a reference key: the suite, or SUITE@CONFIG
    table: str


def markdown_files(root: Path = PROJECT_ROOT) -> list[Path]:
    """The files that may publish tables: the README and every page under docs/."""
    return [p for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()]


def blocks(path: Path) -> list[Block]:
    return [Block(path, m["suite"], m["table"]) for m in BLOCK.finditer(path.read_text())]


def render_block(block: Block, runs: dict[str, RunData], tables: Tables) -> str:
    """The generated text between one block's markers: the table of the suite's reference run and
    its source, or a line saying that no reference run is stored yet."""
    known = tables.get(block.suite.partition("@")[0], {})
    if block.table not in known:
        accepted = ", ".join(f"{s}:{t}" for s in sorted(tables) for t in sorted(tables[s]))
        raise StructbenchError(f"{block.path.name}: <!-- results:{block.suite}:{block.table} --> names no published "
                               f"table; accepted: {accepted}")
    run = runs.get(block.suite)
    if run is None:
        suite, _, config = block.suite.partition("@")
        at = f" at `suites/.../{config}.yaml`" if config else ""
        return f"_No reference run of {suite}{at} is stored yet (`results/{REFERENCE}/{suite}/`)._\n"
    frame = known[block.table](run)
    link = Path(os.path.relpath(run.run_dir / "report.html", block.path.parent)).as_posix()
    rows = run.frame()
    ok = int((rows["status"] == "ok").sum()) if "status" in rows else 0
    env, made_at = run.meta.get("env") or {}, ", ".join(rows_made_at(run))
    reliability = run.meta.get("reliability") or {}
    verdict = f"; marked unreliable: {'; '.join(reliability['reasons'])}" if reliability.get("unreliable") else ""
    source = (f"From the reference run [{run.run_dir.name}]({link}) ({shown_status(run)}, {ok} of "
              f"{run.meta.get('n_cases')} cases ok; rows made at commit {made_at}; {env.get('device_name')}, "
              f"{env.get('threads')} threads{verdict}).")
    table = markdown(frame, run.meta.get("metrics")) if not frame.empty else "_No ok rows yet._"
    return f"{table}\n\n{source}\n"


def regenerated(path: Path, runs: dict[str, RunData], tables: Tables) -> str:
    """``path``'s text with every block's body generated anew."""
    def fill(match: re.Match[str]) -> str:
        body = render_block(Block(path, match["suite"], match["table"]), runs, tables)
        return f"<!-- results:{match['suite']}:{match['table']} -->\n{body}<!-- /results -->"

    return BLOCK.sub(fill, path.read_text())


def stale(results: Path, tables: Tables,
          root: Path = PROJECT_ROOT) -> list[Path]:
    """The markdown files whose published blocks differ from regeneration."""
    runs = reference_runs(results)
    return [p for p in markdown_files(root) if blocks(p) and regenerated(p, runs, tables) != p.read_text()]


def rewrite(results: Path, tables: Tables,
            root: Path = PROJECT_ROOT) -> list[Path]:
    """Regenerate every published block in place; the files that changed."""
    runs = reference_runs(results)
    changed = []
    for path in markdown_files(root):
        if blocks(path):
            text = regenerated(path, runs, tables)
            if text != path.read_text():
                path.write_text(text)
                changed.append(path)
    return changed
