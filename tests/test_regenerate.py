"""Published tables are generated from stored reference runs: the docs' blocks match what
regeneration gives, and regeneration fills a block from a run's rows and names its source."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from structbench import regenerate
from structbench.errors import StructbenchError
from structbench.results import PROJECT_ROOT, reference_runs
from suites import tables

TOY = {"toy": {"headline": lambda run: run.frame()[["family", "score"]]}}


def _reference_run(results: Path, name: str, started: str, scores: dict[str, float]) -> Path:
    run_dir = results / regenerate.REFERENCE / "toy" / name
    run_dir.mkdir(parents=True)
    meta = {"suite": {"name": "toy", "version": "1"}, "config": {}, "started": started, "status": "complete",
            "cli": {"device": "cpu", "dtype": "float32", "threads": 2, "quick": False, "seed": 0},
            "n_cases": len(scores), "n_done": len(scores), "env": {"device_name": "Test CPU", "threads": 2},
            "commits": [{"commit": "a" * 40, "dirty": False}]}
    (run_dir / "run.json").write_text(json.dumps(meta))
    (run_dir / "rows.jsonl").write_text("".join(json.dumps({"case_key": f, "family": f, "score": s, "status": "ok"}) + "\n"
                                                for f, s in scores.items()))
    return run_dir


def test_every_published_table_in_the_readme_and_docs_is_what_its_stored_run_regenerates() -> None:
    found = [b for p in regenerate.markdown_files() for b in regenerate.blocks(p)]
    assert any(b.path.name == "README.md" for b in found), "the README publishes its headline table"
    assert regenerate.stale(PROJECT_ROOT / "results", tables()) == [], \
        "run `python bench.py publish` and commit what it rewrites"


def test_a_block_is_filled_from_the_newest_reference_run_and_names_it(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _reference_run(results, "old", "2026-01-01T00:00:00", {"dense": 1.0})
    _reference_run(results, "new", "2026-02-01T00:00:00", {"dense": 0.5, "blast": 0.25})
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text("intro\n<!-- results:toy:headline -->\nstale text\n<!-- /results -->\noutro\n")
    text = regenerate.regenerated(page, reference_runs(results), TOY)
    assert text.startswith("intro\n<!-- results:toy:headline -->\n") and text.endswith("<!-- /results -->\noutro\n")
    assert "stale text" not in text and "blast" in text and "0.25" in text
    assert "[new](../results/reference/toy/new/report.html)" in text and "aaaaaaaaaa" in text and "Test CPU" in text


def test_a_block_without_a_stored_run_says_so_and_an_unknown_table_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- results:toy:headline -->\n<!-- /results -->\n")
    assert "No reference run of toy" in regenerate.regenerated(page, {}, TOY)
    page.write_text("<!-- results:toy:nosuch -->\n<!-- /results -->\n")
    with pytest.raises(StructbenchError, match="toy:headline"):
        regenerate.regenerated(page, {}, TOY)
