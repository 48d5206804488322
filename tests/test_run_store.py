"""A run folder stays safe with more than one process around: one writer at a time, a partial
last row cut off on resume (naming its case), SIGTERM handled like Ctrl-C, and a run killed
without a trace shown as ``crashed`` and resumable."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pandas as pd
import pytest

from structbench.cli import main
from structbench.results import RunWriter, load_run, read_rows, shown_status
from structbench.run_schema import shown
from structbench.suite import RunContext, Schema
from suites import SUITES

CLI = {"device": "cpu", "dtype": "float32", "threads": 1, "quick": False, "seed": 0}  # what a resumable run stores
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
    assert len((run_dir / "rows.jsonl").read_text().splitlines()) == 4  # and nothing was doubled


def test_a_partial_last_row_is_cut_off_naming_its_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    writer = RunWriter.create(tmp_path, _stub(), {}, CLI, 0)
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


def _copies(kernels_run: tuple[Path, Path], root: Path, *names: str) -> list[Path]:
    """Copies of the shared tiny kernels run under ``root``, one per name (a run id)."""
    copies = [root / "kernels" / name for name in names]
    for copy in copies:
        shutil.copytree(kernels_run[1], copy, ignore=shutil.ignore_patterns(".lock", "*.html"))
    return copies


def _edit_meta(run_dir: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads((run_dir / "run.json").read_text())
    edit(meta)
    (run_dir / "run.json").write_text(json.dumps(meta))


WRONG_META = {  # what a hand-edited or foreign run.json holds -> the field the warning names
    "no config": (lambda m: m.pop("config"), "config: missing"),
    "null config": (lambda m: m.update(config=None), "config: expected a JSON object, got null"),
    "null cli": (lambda m: m.update(cli=None), "cli: expected a JSON object, got null"),
    "no suite version": (lambda m: m["suite"].pop("version"), "suite.version: missing"),
    "null suite version": (lambda m: m["suite"].update(version=None), "suite.version: expected a string, got null"),
    "reliability a list": (lambda m: m.update(reliability=["noisy"]), "reliability: expected a JSON object"),
    "null env": (lambda m: m.update(env=None), "env: expected a JSON object, got null"),
    "numeric start": (lambda m: m.update(started=5), "started: expected a string, got 5"),
    "unknown status": (lambda m: m.update(status="done"), "status: expected one of"),
    "threads a string": (lambda m: m["cli"].update(threads="1"), 'cli.threads: expected an integer >= 1, got "1"'),
}


@pytest.mark.parametrize("case", WRONG_META)
def test_a_run_json_of_the_wrong_shape_is_skipped_naming_the_field(case: str, kernels_run: tuple[Path, Path],
                                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit, field = WRONG_META[case]
    root = tmp_path / "results"
    good, bad = _copies(kernels_run, root, "20300101-000000-cpu-good", "20200101-000000-cpu-bad")
    _edit_meta(bad, edit)
    capsys.readouterr()
    assert main(["report", "--out", str(root)]) == 0  # the bad run does not stop the others' reports
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning: skipping malformed run.json (") and field in err[0], err
    assert str(bad / "run.json") in err[0]
    assert (good / "report.html").is_file() and not (bad / "report.html").exists()
    page = (root / "index.html").read_text()
    assert good.name in page and bad.name not in page
    assert main(["--resume", str(bad)]) == 2  # resuming it is one line too
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("error: malformed run.json (") and field in line


def test_resuming_a_run_without_its_stored_options_is_one_line(kernels_run: tuple[Path, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    (run_dir,) = _copies(kernels_run, tmp_path / "results", "20200101-000000-cpu-nodtype")
    _edit_meta(run_dir, lambda m: m["cli"].pop("dtype"))
    assert main(["report", str(run_dir)]) == 0  # it still reads and reports
    capsys.readouterr()
    assert main(["--resume", str(run_dir)]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("error: cannot resume") and "cli.dtype" in line


def test_bad_and_repeated_rows_are_left_out_by_line_and_resume_repairs_the_file(
        kernels_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "results"
    (run_dir,) = _copies(kernels_run, root, "20200101-000000-cpu-rows")
    path = run_dir / "rows.jsonl"
    lines = path.read_text().splitlines()
    lost = json.loads(lines[1])["case_key"]
    hostile = [lines[0], "{not json", *lines[2:6], "[1, 2, 3]", '"str"', "{}", '{"case_key": "x", "status": "done"}',
               lines[0], *lines[6:]]
    path.write_text("".join(line + "\n" for line in hostile))
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert warning.startswith(f"warning: {path}: left out of the tables 6 line(s) (line 2: not a JSON row")
    assert "and 3 more" in warning and "--resume" in warning
    run = load_run(run_dir)
    assert [p.split(":")[0] for p in run.problems] == [f"line {n}" for n in (2, 7, 8, 9, 10, 11)]
    assert run.problems[3:] == ["line 9: case_key: missing", 'line 10: status: expected one of "ok", "skipped", '
                                '"error", got "done"', f"line 11: case {shown(json.loads(lines[0])['case_key'])} "
                                "again (first on line 1)"]
    assert [r["case_key"] for r in run.rows] == [json.loads(line)["case_key"] for line in lines if line != lines[1]]
    assert len(pd.read_csv(run_dir / "table.csv")) == len(lines) - 1  # tables hold each case once

    assert main(["--resume", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert "left out 6 line(s)" in captured.err and "cases without a row run again" in captured.err
    assert f"kernels: {len(lines)} rows: " in captured.out  # the lost case ran again, nothing counted twice
    (backup,) = run_dir.glob("rows.jsonl.bak-*")
    assert backup.read_text().splitlines() == hostile  # the file as it was
    repaired = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["case_key"] for r in repaired) == sorted(json.loads(line)["case_key"] for line in lines)
    assert lost in {r["case_key"] for r in repaired} and not load_run(run_dir).problems


def test_a_shard_with_bad_rows_is_not_merged(kernels_run: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (run_dir,) = _copies(kernels_run, tmp_path / "results", "20200101-000000-cpu-shard")
    with (run_dir / "rows.jsonl").open("a") as fh:
        fh.write("[1, 2, 3]\n")
    assert main(["merge", str(run_dir), "--out", str(tmp_path / "merged")]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "line 13: expected a JSON object, got [1, 2, 3]" in line and "--resume" in line
    assert not (tmp_path / "merged").exists()
