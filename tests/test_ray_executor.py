"""``--executor ray``: the same rows as the serial run, the driver the only writer, and a case
whose worker dies re-run by Ray with nothing doubled. Skipped where Ray is not installed."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

from structbench.cli import main  # noqa: E402
from structbench.results import load_run  # noqa: E402
from structbench.runner import run_suite  # noqa: E402
from structbench.suite import RunContext  # noqa: E402
from tests.test_shards import DETERMINISTIC, TINY  # noqa: E402


def _table(run_dir: Path) -> dict[str, tuple]:
    return {r["case_key"]: tuple(r.get(k) for k in DETERMINISTIC) for r in load_run(run_dir).rows}


def test_ray_gives_the_serial_rows(tmp_path: Path) -> None:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    runs = {}
    for name, extra in (("serial", []), ("ray", ["--executor", "ray", "--workers", "2"])):
        assert main(["--suite", "approx", "--config", str(config), "--out", str(tmp_path / name), "--threads", "1",
                     *extra]) == 0
        (runs[name],) = (tmp_path / name / "approx").iterdir()
    assert _table(runs["ray"]) == _table(runs["serial"])
    rows = load_run(runs["ray"]).rows
    assert all(r["worker"] for r in rows) and load_run(runs["ray"]).meta["status"] == "complete"


def test_a_case_whose_worker_dies_is_run_again_once(tmp_path: Path, stub_run: Any) -> None:
    from structbench.ray_executor import RayExecutor

    marker = tmp_path / "died"

    def run_case(case: dict, ctx: RunContext) -> list[dict]:
        if case["i"] == 1 and not marker.exists():
            marker.write_text("once")
            os._exit(1)  # the worker process dies mid-case
        return [{"value": case["i"]}]

    suite, writer, ctx = stub_run(run_case, 4)
    run_suite(suite, writer, ctx, RayExecutor(workers=2))
    writer.close()
    run = load_run(writer.run_dir)
    assert marker.exists() and run.meta["status"] == "complete"
    assert sorted(r["value"] for r in run.rows) == [0, 1, 2, 3]  # every case once: none lost, none doubled
