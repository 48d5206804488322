"""The "which structure" page: every registered family listed whatever runs exist, a model's
latency weighting its shapes as the model has them, real-layer errors averaged over layers,
and every clickable point opening a report that exists."""
from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest

from structbench.families import list_families
from structbench.results import REFERENCE, RunData, load_run, reference_runs
from suites.which_structure import (MODEL_LINEARS, PAGE, SUITE_ORDER, at_a_glance, coverage, layer_errors,
                                    model_latency, write_page)
from tests.stored_runs import fake_run, llama_compress_case, train_case


def _run(suite: str, rows: list[dict]) -> RunData:
    return RunData(Path("/nowhere") / suite / "r", {"suite": {"name": suite}, "status": "complete"}, rows, [])


def _kernel_row(family: str, rho: float, shape: str, family_s: float, dense_s: float, tokens: int = 128) -> dict:
    return {"status": "ok", "family": family, "rho": rho, "shape": shape, "tokens": tokens, "mode": "eager",
            "samples_s": [family_s] * 6, "dense_samples_s": [dense_s] * 6, "noisy": False}


def test_a_model_latency_weights_each_shape_by_its_count_in_the_layer() -> None:
    counts = MODEL_LINEARS["smollm2"]
    times = {"smollm2-q": (1.0, 2.0), "smollm2-kv": (1.0, 1.0), "smollm2-up": (3.0, 4.0), "smollm2-down": (2.0, 2.0)}
    rows = [_kernel_row("lowrank", 0.5, shape, f, d) for shape, (f, d) in times.items()]
    rows += [_kernel_row("monarch", 0.5, shape, 1.0, 1.0) for shape in list(times)[:3]]  # one shape skipped
    rows += [_kernel_row("lowrank", 0.5, "smollm2-q", 9.0, 1.0, tokens=1)]  # another token count
    got = model_latency(_run("kernels", rows), 128)
    assert list(got["family"]) == ["lowrank"]  # monarch missed a shape: no model figure
    expected = sum(counts[s] * f for s, (f, _) in times.items()) / sum(counts[s] * d for s, (_, d) in times.items())
    assert got["latency"].iloc[0] == pytest.approx(expected) and got["latency_low"].iloc[0] == pytest.approx(expected)


def test_real_layer_errors_are_means_over_layers_with_their_standard_error() -> None:
    rows = [{"status": "ok", "experiment": "projection", "source": "smollm2", "family": "lowrank", "rho": 0.5,
             "objective": objective, "layer": layer, "rel_error": 0.1 * (layer + 1), "weighted_error": 0.01 * (layer + 1)}
            for layer in range(3) for objective in ("frobenius", "calibrated")]
    rows.append({"status": "ok", "experiment": "projection", "source": "synthetic", "family": "lowrank", "rho": 0.5,
                 "objective": "frobenius", "rel_error": 9.0})
    got = layer_errors(_run("approx", rows)).set_index("objective")
    assert got.loc["frobenius", "mean"] == pytest.approx(0.2) and got.loc["frobenius", "error"] == "rel_error"
    assert got.loc["calibrated", "mean"] == pytest.approx(0.02) and got.loc["calibrated", "error"] == "weighted_error"
    assert got.loc["frobenius", "stderr"] == pytest.approx(0.1 / 3 ** 0.5) and got.loc["frobenius", "layers"] == 3


def test_without_reference_runs_the_page_still_lists_every_family(tmp_path: Path) -> None:
    page = html.unescape(write_page(tmp_path).read_text())
    table = coverage({})
    assert set(table["family"]) == set(list_families())
    assert all(f"<td>{family}</td>" in page for family in list_families())
    assert page.count("no reference run stored yet") == len(list_families()) * len(SUITE_ORDER)


def test_every_point_opens_the_report_of_its_run(kernels_run: tuple[Path, Path], tmp_path: Path) -> None:
    results = tmp_path / "results"
    reference = results / REFERENCE
    shutil.copytree(kernels_run[1], reference / "kernels" / kernels_run[1].name, ignore=shutil.ignore_patterns(".lock"))
    llama = fake_run(reference, "llama-compress", llama_compress_case)
    train = fake_run(reference, "train-lm", train_case, quick=False, families=["lowrank", "blast"])
    for run_dir in (llama, train, reference / "kernels" / kernels_run[1].name):
        (run_dir / "report.html").write_text("<p>report</p>")
    # a run at another config of its suite is another experiment, published under its own key
    assert set(reference_runs(results)) == {"kernels@tiny", "llama-compress", "train-lm"}
    meta_file = reference / "kernels" / kernels_run[1].name / "run.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "cli": {**meta["cli"], "config": None}}))  # as at the default config
    runs = reference_runs(results)
    assert set(runs) == {"kernels", "llama-compress", "train-lm"}
    page = write_page(results).read_text()
    assert (results / PAGE).is_file()
    targets = {unquote(h) for h in re.findall(r'"customdata":\["([^"]+)"', page)}
    assert targets and all((results / t).is_file() for t in targets)
    assert {str((results / t).resolve().parent) for t in targets} == {str(llama.resolve()), str(train.resolve())}
    glance = at_a_glance(runs)
    blast = glance[(glance["family"] == "blast") & (glance["rho"] == 0.25)].iloc[0]
    assert "±" in blast["train-lm val_ppl (sd over seeds)"]  # three seeds: a spread
    assert "not in this run" in html.unescape(page)  # the tiny kernels run timed lowrank only
    assert json.loads((llama / "run.json").read_text())["suite"]["name"] == load_run(llama).suite
