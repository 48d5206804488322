"""The time-left estimate: cases priced by the finished ones of their kind, a kind not run yet
at the overall mean (and said so); the run prints and stores it at 10 % and 50 % of its cases
and sets it against the measured time at the end; case labels name their fields."""
from __future__ import annotations

from typing import Any

import pytest

from structbench.estimate import Estimate, duration
from structbench.results import load_run
from structbench.runner import _label
from structbench.suite import RunContext, Schema
from suites import SUITES


def test_cases_are_priced_by_the_finished_cases_of_their_kind() -> None:
    todo = [{"family": f, "rho": r} for f in ("lowrank", "kronecker") for r in (0.5, 0.2)]
    estimate = Estimate(todo, ["family"])
    assert estimate.remaining() is None and estimate.text() == ""
    estimate.finished(todo[0], 10.0)
    assert estimate.remaining() == (10.0 + 2 * 10.0, 0, 2)  # kronecker not run yet: at the mean
    assert "2 of kinds not run yet" in estimate.text()
    estimate.finished(todo[2], 100.0)
    assert estimate.remaining() == (10.0 + 100.0, 0, 0) and estimate.text() == "~2 min left"


def test_stored_timings_price_a_run_before_its_first_case_and_yield_to_measured_ones() -> None:
    todo = [{"family": f, "rho": r} for f in ("lowrank", "kronecker", "gaudi") for r in (0.5, 0.2)]
    prior = [{"family": "lowrank", "status": "ok", "case_key": "a", "case_seconds": 4.0},
             {"family": "lowrank", "status": "ok", "case_key": "a", "case_seconds": 4.0},  # one case's two rows
             {"family": "lowrank", "status": "ok", "case_key": "b", "case_seconds": 8.0},
             {"family": "lowrank", "status": "ok", "case_key": "c", "case_seconds": 30.0},  # median 8
             {"family": "kronecker", "status": "error", "case_key": "d", "case_seconds": 1.0},  # not a timing
             {"family": "kronecker", "status": "ok", "case_key": "e", "case_seconds": 100.0}]
    estimate = Estimate(todo, ["family"], prior)
    # lowrank 2 x 8, kronecker 2 x 100, gaudi (no timing) 2 x the mean of the known kinds, 54
    assert estimate.remaining() == (2 * 8 + 2 * 100 + 2 * 54, 4, 2)
    assert estimate.text() == "~5 min left (4 priced from stored runs, 2 of kinds not run yet, priced at the mean)"
    estimate.finished(todo[0], 20.0)  # a measured lowrank case replaces the stored price
    assert estimate.remaining() == (20 + 2 * 100 + 2 * 60, 2, 2)


def test_durations_read_in_their_unit() -> None:
    assert [duration(s) for s in (42, 780, 8640)] == ["42 s", "13 min", "2.4 h"]


def test_a_label_names_the_fields_a_bare_value_would_not_explain() -> None:
    suite = SUITES.get("llama-compress")
    case = {"family": "blast", "rho": 0.8, "objective": "calibrated", "retrained": True, "draw": 0}
    assert _label(suite, case) == "blast rho=0.8 calibrated retrained draw=0"
    assert _label(suite, {**case, "retrained": False, "draw": None}) == "blast rho=0.8 calibrated"


def test_a_run_prints_and_stores_its_estimate_and_the_time_it_took(stub_run: Any,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from structbench.publish import summary
    from structbench.runner import run_suite

    def run_case(case: dict, ctx: RunContext) -> list[dict]:
        return [{"value": case["i"]}]

    suite, writer, ctx = stub_run(run_case, 10)
    suite = dataclasses.replace(suite, schema=Schema(("i",), cost_keys=()))
    run_suite(suite, writer, ctx)
    err = capsys.readouterr().err
    assert "[10/10] i=9: ok" in err and " left" in err and err.count("estimated total") == 3
    assert "estimated total: none yet" in err  # nothing stored before the first case
    run = load_run(writer.run_dir)
    assert [e["cases_run"] for e in run.meta["estimates"]] == [1, 5] and run.meta["session_s"] >= 0
    assert "this session took" in summary(run) and "after 1 of 10 cases" in summary(run)
    # the next run of the suite in the same results folder is priced by this one's rows up front
    again, writer, ctx = stub_run(run_case, 10)
    run_suite(dataclasses.replace(again, schema=Schema(("i",), cost_keys=())), writer, ctx)
    err = capsys.readouterr().err
    assert "before the first case: estimated total" in err and "(10 priced from stored runs)" in err
    assert load_run(writer.run_dir).meta["estimates"][0]["cases_run"] == 0
    assert "before the first case" in summary(load_run(writer.run_dir))


def test_llama_compress_names_its_phases_before_the_first_case(stub_run: Any,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from structbench.config import load_config, resolve
    from structbench.runner import run_suite

    llama = SUITES.get("llama-compress")
    cases = llama.expand(resolve("llama-compress", load_config(llama.config_path), llama.validate, quick=False))
    # 8 families x 3 CRs x (frobenius + 3 calibrated draws) projections; 8 x 2 re-trained twins and the control
    assert llama.phases(cases) == {"calibration draws": 3, "projections": 96, "re-trainings": 17, "evaluations": 114}

    suite, writer, ctx = stub_run(lambda case, ctx: [{"value": case["i"]}], 3)
    run_suite(dataclasses.replace(suite, phases=lambda todo: {"projections": len(todo)}), writer, ctx)
    err = capsys.readouterr().err
    assert "phases: projections 3" in err and err.index("phases:") < err.index("[1/3]")
