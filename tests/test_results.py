"""The results schema (run.json metadata, rows.jsonl rows), the kernels rows' derived columns, run folders and tables."""
from __future__ import annotations

import json
import math
import statistics
import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from structbench.report.tables import display_frame, geomean, markdown, split_constant
from structbench.results import SCHEMA_VERSION, RunWriter, list_runs, load_run, read_rows
from structbench.suite import Schema


def test_run_json_holds_the_schema(kernels_run: tuple[Path, Path]) -> None:
    meta = json.loads((kernels_run[1] / "run.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["suite"]["name"] == "kernels" and meta["suite"]["version"]
    assert meta["config"]["shapes"] == {"tiny": [64, 64], "odd": [67, 61]}  # the resolved config
    assert meta["cli"] == {"device": "cpu", "dtype": "float32", "threads": 1, "quick": False, "seed": 0,
                           "families": None, "config": meta["cli"]["config"], "set": [], "retry_noisy": 0}
    assert len(meta["git"]["commit"]) == 40 and isinstance(meta["git"]["dirty"], bool)
    env = meta["env"]
    assert env["torch"] and env["python"] and env["device"] == "cpu" and env["threads"] == 1 and env["device_name"]
    assert "torch_version" in env["collect_env"] or "error" in env["collect_env"]
    assert meta["seed"] == 0 and meta["started"] <= meta["finished"]
    assert meta["status"] == "complete" and meta["n_cases"] == meta["n_done"] == 12  # the dense control included
    assert meta["metrics"]["speedup"]["higher_is_better"] is True
    assert "rows" not in meta and read_rows(kernels_run[1])  # rows live in rows.jsonl only
    assert meta["schema"]["headline"] == ["median_s"] and "samples_s" in meta["schema"]["hidden"]


def test_kernels_rows_are_consistent(kernels_run: tuple[Path, Path]) -> None:
    ok = [r for r in read_rows(kernels_run[1]) if r["status"] == "ok"]
    assert len(ok) == 10
    for r in ok:
        assert r["rel_err"] < 1e-4 and r["runs"] == len(r["samples_s"]) == len(r["dense_samples_s"]) >= 6
        # samples are stored to 4 significant digits; the medians come from the full ones
        assert all(s == float(f"{s:.4g}") for s in r["samples_s"] + r["dense_samples_s"])
        assert math.isclose(r["median_s"], statistics.median(r["samples_s"]), rel_tol=5e-4)
        ratios = [d / f for d, f in zip(r["dense_samples_s"], r["samples_s"])]
        assert math.isclose(r["speedup"], statistics.median(ratios), rel_tol=1e-3)
        assert r["speedup_low"] <= r["speedup"] <= r["speedup_high"]
        assert math.isclose(r["ideal_speedup"], r["dense_macs"] / r["macs"])
        assert math.isclose(r["efficiency"], r["speedup"] / r["ideal_speedup"])
        assert math.isclose(r["gflops"], 2 * r["macs"] / r["median_s"] / 1e9)
        assert r["macs"] == r["macs_fvcore"] and r["macs_agree"] is True and r["dense_macs"] == r["tokens"] * r["out_features"] * r["in_features"]
        assert r["macs_fvcore_tokens"] == r["tokens"] and math.isclose(r["macs_ratio"], r["macs"] / r["dense_macs"])
        assert r["param_bytes"] == 4 * r["params"]
        assert r["peak_mem_bytes"] is not None or not os.access("/proc/self/clear_refs", os.W_OK)
        assert 0 < r["rho_actual"] <= (1.0 if r["family"] == "dense" else 0.5) and r["case_seconds"] > 0
        assert isinstance(r["noisy"], bool) and r["attempts"] == 1


CLI = {"device": "cpu", "dtype": "float32", "threads": 1, "quick": False, "seed": 0}  # what a resumable run stores


def _stub_suite(name: str = "stub") -> SimpleNamespace:
    return SimpleNamespace(name=name, version="0", description="test", metrics={}, schema=Schema(("k",)), about=None)


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path: Path) -> None:
    a = RunWriter.create(tmp_path, _stub_suite(), {}, CLI, 0)
    b = RunWriter.create(tmp_path, _stub_suite(), {}, CLI, 0)
    a.append([{"case_key": "k", "status": "ok"}])
    assert a.run_dir != b.run_dir and b.rows == []
    assert {r.run_dir for r in list_runs(tmp_path)} == {a.run_dir, b.run_dir}


def test_a_row_cut_short_by_a_kill_is_ignored(tmp_path: Path) -> None:
    writer = RunWriter.create(tmp_path, _stub_suite(), {}, CLI, 0)
    writer.append([{"case_key": "a", "status": "ok", "x": 1.0}])
    with (writer.run_dir / "rows.jsonl").open("a") as fh:
        fh.write('{"case_key": "b", "sta')
    assert [r["case_key"] for r in load_run(writer.run_dir).rows] == ["a"]
    writer.close()  # the killed process's lock goes with it
    assert RunWriter.reopen(writer.run_dir, _stub_suite()).done_keys() == {"a"}


def test_tables_render_and_hoist_constant_columns() -> None:
    frame = pd.DataFrame({"family": ["a", "b"], "dtype": ["float32"] * 2, "median_s": [1.234567e-5, 2.0],
                          "speedup": [2.0, 0.5], "samples_s": [[1.0], [2.0]], "hparams": [{"r": 1}, {"r": 2}]})
    varying, constant = split_constant(frame)
    assert constant == {"dtype": "float32"} and "dtype" not in varying
    metrics = {"median_s": {"higher_is_better": False}, "speedup": {"higher_is_better": True}}
    shown = display_frame(frame, metrics)
    assert list(shown.columns) == ["family", "dtype", "median_s ↓", "speedup ↑", "hparams"]  # samples hidden
    assert shown["median_s ↓"].tolist() == ["1.235e-05", "2"] and shown["hparams"].tolist() == ['{"r":1}', '{"r":2}']
    assert "| family" in markdown(frame, metrics)
    assert geomean([2.0, 0.5]) == pytest.approx(1.0) and geomean([4.0, 1.0]) == pytest.approx(2.0)
    assert math.isnan(geomean([]))
