"""A run folder stays safe with more than one process around: one writer at a time, a partial
last row cut off on resume (naming its case), SIGTERM handled like Ctrl-C, and a run killed
without a trace shown as ``crashed`` and resumable."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from structbench.cli import main
from structbench.results import RunWriter, load_run, read_rows, shown_status
from structbench.suite import RunContext, Schema
from suites import SUITES

TINY = "families: [lowrank]\nshapes: {tiny: [32, 32]}\nrhos: [0.5]\ntokens: [4, 8]\nmin_run_time: 0.01\nrounds: 6\n"


def _config(tmp_path: Path) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(TINY)
    return str(path)


def _stub() -> SimpleNamespace:
    return SimpleNamespace(name="stub", version="0", description="", metrics={}, schema=Schema(("k",)), about=None)


def test_a_second_writer_of_a_live_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    assert main(["--suite", "kernels", "--config", _config(tmp_path), "--out", str(out), "--threads", "1"]) == 0
    (run_dir,) = (out / "kernels").iterdir()
    live = RunWriter.reopen(run_dir, SUITES.get("kernels"))  # another process resuming it now
    capsys.readouterr()
    assert main(["--resume", str(run_dir)]) == 2
    assert "being written by another process" in capsys.readouterr().err
    live.close()
    assert main(["--resume", str(run_dir)]) == 0  # once it is gone, resuming works
    assert len(read_rows(run_dir)) == 4  # and nothing was doubled


def test_a_partial_last_row_is_cut_off_naming_its_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    writer = RunWriter.create(tmp_path, _stub(), {}, {"device": "cpu", "threads": 1}, 0)
    writer.append([{"case_key": "a", "status": "ok"}])
    writer.close()
    with (writer.run_dir / "rows.jsonl").open("a") as fh:
        fh.write('{"case_key": "b", "status": "o')  # killed mid-write
    messages: list[str] = []
    again = RunWriter.reopen(writer.run_dir, _stub(), warn=messages.append)
    assert len(messages) == 1 and "partial last row" in messages[0] and "case b" in messages[0]
    again.append([{"case_key": "b", "status": "ok"}])
    lines = (writer.run_dir / "rows.jsonl").read_text().splitlines()
    assert [json.loads(line)["case_key"] for line in lines] == ["a", "b"]  # valid JSON lines, none glued


def test_sigterm_mid_run_is_an_interrupt_and_resume_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    real = SUITES.get("kernels")
    done: list[dict] = []

    def terminated(case: dict, ctx: RunContext) -> list[dict]:
        if len(done) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. a scheduler ending the job
        done.append(case)
        return real.run_case(case, ctx)

    monkeypatch.setattr(SUITES, "get", lambda name: dataclasses.replace(real, run_case=terminated))
    out = tmp_path / "results"
    assert main(["--suite", "kernels", "--config", _config(tmp_path), "--out", str(out), "--threads", "1"]) == 143
    (run_dir,) = (out / "kernels").iterdir()
    run = load_run(run_dir)
    assert run.meta["status"] == "interrupted" and len(run.rows) == 1 and (run_dir / "report.html").is_file()
    monkeypatch.setattr(SUITES, "get", lambda name: real)
    assert main(["--resume", str(run_dir)]) == 0
    assert load_run(run_dir).meta["status"] == "complete" and len(read_rows(run_dir)) == 4


def test_a_run_left_running_without_a_writer_shows_as_crashed_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert main(["--suite", "kernels", "--config", _config(tmp_path), "--out", str(out), "--threads", "1"]) == 0
    (run_dir,) = (out / "kernels").iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**meta, "status": "running"}))  # SIGKILL leaves this
    (run_dir / "rows.jsonl").write_text("".join(line + "\n" for line in (run_dir / "rows.jsonl").read_text().splitlines()[:2]))
    assert shown_status(load_run(run_dir)) == "crashed"
    assert main(["report", "--out", str(out)]) == 0
    assert "crashed" in (out / "index.html").read_text()
    live = RunWriter.reopen(run_dir, SUITES.get("kernels"))
    assert shown_status(load_run(run_dir)) == "running"  # someone holds it: really running
    live.close()
    assert main(["--suite", "kernels", "--resume", "--out", str(out)]) == 0  # the newest unfinished run
    assert load_run(run_dir).meta["status"] == "complete" and len(read_rows(run_dir)) == 4
