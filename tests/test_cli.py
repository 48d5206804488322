"""bench.py end to end: one-line errors, the files a run writes, report, resume, compile rows."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from structbench.cli import main
from structbench.report.html import PLOTLY_FILE
from structbench.results import PROJECT_ROOT, load_run, read_rows
from structbench.suite import RunContext
from suites import SUITES


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["--suite", "kernel"], "did you mean 'kernels'"),
    (["--suite", "kernels", "--device", "cuda"], "cuda"),
    (["--suite", "kernels", "--config", "MALFORMED"], "malformed YAML"),
])
def test_bad_input_subprocess(tmp_path: Path, args: list[str], expected: str) -> None:
    """The real entry point: exit status 2, one stderr line, no traceback."""
    if "MALFORMED" in args:
        (tmp_path / "bad.yaml").write_text("shapes: [1, 2\nrhos: 0.5\n")
        args = [a.replace("MALFORMED", str(tmp_path / "bad.yaml")) for a in args]
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc = subprocess.run([sys.executable, "bench.py", *args, "--out", str(tmp_path / "out")], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert expected in one_error_line(proc.stderr)


BAD_CONFIGS = {
    "unknown key": ("shapes: {a: [8, 8]}\nrhos: [0.5]\ntokens: [1]\nshape: 3\n", "unknown key(s) ['shape']"),
    "quick not a mapping": ("shapes: {a: [8, 8]}\nrhos: [0.5]\ntokens: [1]\nquick: 5\n", "quick must be a mapping"),
    "bad shape": ("shapes: {a: [8]}\nrhos: [0.5]\ntokens: [1]\n", "[out_features, in_features]"),
    "rho above 1": ("shapes: {a: [8, 8]}\nrhos: [1.5]\ntokens: [1]\n", "rhos must be"),
    "bad mode": ("shapes: {a: [8, 8]}\nrhos: [0.5]\ntokens: [1]\nmodes: [fast]\n", "modes must be"),
    "unknown family": ("families: [blats]\nshapes: {a: [8, 8]}\nrhos: [0.5]\ntokens: [1]\n", "did you mean 'blast'"),
    "not a mapping": ("- 1\n- 2\n", "must be a YAML mapping"),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_bad_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    text, expected = BAD_CONFIGS[name]
    (tmp_path / "c.yaml").write_text(text)
    assert main(["--suite", "kernels", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path)]) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "kernels").exists()  # nothing started


@pytest.mark.parametrize("args, expected", [
    (["--suite", "kernels", "--families", "dense,blats"], "did you mean 'blast'"),
    (["--suite", "kernels", "--dtype", "f32"], "accepted: float32"),
    (["--suite", "kernels", "--threads", "two"], "invalid int value"),
    (["--suite", "kernels", "--threads", "0"], "--threads must be in 1..1024"),
    (["--suite", "kernels", "--device", "tpu"], "accepted: cpu, cuda"),
    (["--suite", "kernels", "--resume", "--quick"], "drop --quick"),
    (["--suite", "kernels", "--set", "rhos"], "expected key=value"),
    (["--suite", "kernels", "--set", "tokenz=[4]"], "unknown key(s) ['tokenz']"),
    (["--suite", "kernels", "--resume"], "no unfinished kernels run"),
    (["--resume", "NOWHERE"], "not a structbench run folder"),
    (["--quick"], "give --suite NAME"),
    (["--bogus"], "unrecognized arguments"),
    (["compare", "NOWHERE"], "required: run_b"),
    (["report", "NOWHERE"], "not a structbench run folder"),
])
def test_bad_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str) -> None:
    args = [a.replace("NOWHERE", str(tmp_path / "nowhere")) for a in args]
    assert main([*args, "--out", str(tmp_path)] if args[0] not in ("compare", "report") else args) == 2
    assert expected in one_error_line(capsys.readouterr().err)


def test_list_names_suites_and_families(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "kernels" in out and "approx" in out
    assert all(name in out for name in ("dense", "lowrank", "blockdiag", "monarch", "blast", "pixelfly", "gaudi"))


def test_run_writes_every_file(kernels_run: tuple[Path, Path]) -> None:
    out, run_dir = kernels_run
    for name in ("rows.jsonl", "run.json", "table.md", "table.csv", "report.html"):
        assert (run_dir / name).stat().st_size > 0, name
    assert (out / "index.html").exists() and (out / PLOTLY_FILE).stat().st_size > 1_000_000
    rows = read_rows(run_dir)
    assert len(rows) == 12  # 2 shapes x 2 token counts x (dense control + 2 families)
    for row in (r for r in rows if r["status"] == "ok"):  # CPU eager: the products' ceiling
        assert 0 < row["products_share"] <= 1
        assert row["products_efficiency"] == pytest.approx(row["efficiency"] / row["products_share"])
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert {(r["family"], r["shape"]) for r in skipped} == {("blockdiag", "odd")}
    assert all("no block count divides" in r["reason"] for r in skipped)
    md = (run_dir / "table.md").read_text()
    assert "Same in every row:" in md and "speedup ↑" in md and "median_s ↓" in md
    assert "samples_s" not in (run_dir / "table.csv").read_text().splitlines()[0]
    report = (run_dir / "report.html").read_text()
    assert f"src='../../{PLOTLY_FILE}'" in report and "https://" not in report.split("<body>")[0]
    assert f"{run_dir.name}/report.html" in (out / "index.html").read_text()


def test_report_rebuilds_pages_from_stored_rows(kernels_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out, run_dir = kernels_run
    rows_before = (run_dir / "rows.jsonl").read_bytes()
    before = (run_dir / "report.html").read_text()
    (run_dir / "report.html").unlink()
    (out / "index.html").unlink()
    assert main(["report", "--out", str(out)]) == 0
    assert "rebuilt 1 report(s)" in capsys.readouterr().out
    assert (run_dir / "report.html").read_text() == before  # the same page: built from stored rows only
    assert (out / "index.html").exists()
    assert (run_dir / "rows.jsonl").read_bytes() == rows_before


def test_resume_continues_without_redoing_cases(kernels_run: tuple[Path, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C during the third case keeps two cases; --resume runs only the other six."""
    config = kernels_run[1] / "run.json"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps(json.loads(config.read_text())["config"]))  # JSON is YAML
    real = SUITES.get("kernels")
    ran: list[str] = []

    def interrupting(case: dict, ctx: RunContext) -> list[dict]:
        if len(ran) == 2:
            raise KeyboardInterrupt
        ran.append(case["family"] + case["shape"] + str(case["tokens"]))
        return real.run_case(case, ctx)

    monkeypatch.setattr(SUITES, "get", lambda name: dataclasses.replace(real, run_case=interrupting))
    out = tmp_path / "out"
    assert main(["--suite", "kernels", "--config", str(cfg), "--out", str(out), "--threads", "1"]) == 130
    (run_dir,) = (out / "kernels").iterdir()
    run = load_run(run_dir)
    assert run.meta["status"] == "interrupted" and len(run.rows) == 2
    assert (run_dir / "table.md").exists() and (run_dir / "report.html").exists()
    assert "resume with --resume" in capsys.readouterr().err
    kept = (run_dir / "rows.jsonl").read_text()

    ran.clear()
    monkeypatch.setattr(SUITES, "get", lambda name: dataclasses.replace(real, run_case=lambda c, x: ran.append(c) or real.run_case(c, x)))
    assert main(["--suite", "kernels", "--resume", "--out", str(out), "--threads", "2"]) == 0
    err = capsys.readouterr().err
    assert "12 cases, 2 already done" in err
    assert "resuming with --threads 2 (the run started with 1;" in err  # honoured, not silently dropped
    run = load_run(run_dir)
    assert len(ran) == 10 and run.meta["status"] == "complete" and len(run.meta["resumed"]) == 1
    assert run.meta["cli"]["threads"] == 2 and run.meta["threads_changed"][0]["from"] == 1
    assert (run_dir / "rows.jsonl").read_text().startswith(kept)
    assert len({r["case_key"] for r in run.rows}) == len(run.rows) == 12


def test_compile_mode_is_its_own_row(tmp_path: Path) -> None:
    """torch.compile on CPU for one family: a separate 'compile' row next to 'eager'."""
    from suites.kernels.suite import run_case

    case = {"family": "lowrank", "shape": "t", "out_features": 32, "in_features": 32, "rho": 0.5, "tokens": 4,
            "mode": "compile", "min_run_time": 0.01, "rounds": 6, "precision": 0.05, "max_time": 0.1}
    ctx = RunContext(device="cpu", dtype="float32", threads=1, seed=0, quick=True, run_dir=tmp_path,
                     cache_dir=tmp_path, config={})
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    start = time.perf_counter()
    (row,) = run_case(case, ctx)
    assert "status" not in row and row["runs"] >= 6 and row["speedup_low"] <= row["speedup"] <= row["speedup_high"] and row["speedup"] > 0
    assert row["products_share"] is None  # a compiled forward's kernels run past the dispatcher
    assert counters["stats"]["unique_graphs"] >= graphs + 2  # the family and nn.Linear were compiled
    assert time.perf_counter() - start < 120


def test_report_lists_the_cases_where_compile_loses() -> None:
    import pandas as pd

    from suites.kernels.report import _compile_section, compile_vs_eager

    def row(family: str, tokens: int, mode: str, median: float, dense: float) -> dict[str, Any]:
        return {"family": family, "shape": "s", "rho": 0.5, "tokens": tokens, "mode": mode, "median_s": median,
                "dense_median_s": dense}

    ok = pd.DataFrame([row("blast", 1, "eager", 1.0, 2.0), row("blast", 1, "compile", 3.0, 1.0),
                       row("blast", 16, "eager", 2.0, 2.0), row("blast", 16, "compile", 1.0, 2.0),
                       row("lowrank", 1, "eager", 1.0, 1.0)])  # eager only: not compared
    table = compile_vs_eager(ok)
    assert table[["tokens", "compile_over_eager"]].values.tolist() == [[1, 3.0], [16, 0.5]]
    assert table["dense_compile_over_eager"].tolist() == [0.5, 1.0]
    assert "slower than eager in 1 of 2 cases" in _compile_section(ok).text
    assert _compile_section(ok[ok["mode"] == "eager"]) is None


def test_runner_shows_progress_and_records_a_crashing_case(stub_run: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """k of K on stderr; a case that raises is an 'error' row and the run goes on."""
    from structbench.runner import run_suite

    def run_case(case: dict, ctx: RunContext) -> list[dict]:
        if case["i"] == 1:
            raise RuntimeError("kernel exploded")
        return [{"value": case["i"]}]

    suite, writer, ctx = stub_run(run_case, 3)
    run_suite(suite, writer, ctx)
    err = capsys.readouterr().err
    # not a terminal (pytest captures stderr): one line per finished case, no bar
    assert "[2/3] i=1: error" in err and "[3/3] i=2: ok" in err and "\r" not in err
    run = load_run(writer.run_dir)
    assert [r["status"] for r in run.rows] == ["ok", "error", "ok"] and run.meta["status"] == "complete"
    assert run.rows[1]["reason"] == "RuntimeError: kernel exploded"


def test_only_not_applicable_is_skipped_a_structbench_error_in_a_case_is_an_error(
        stub_run: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A case that does not apply is a gap with its reason; a set-up that cannot work (here a
    missing weights file, raised as a user-facing error) is a fault with its traceback logged."""
    from structbench.errors import NotApplicable, StructbenchError
    from structbench.runner import run_suite

    def run_case(case: dict, ctx: RunContext) -> list[dict]:
        if case["i"] == 0:
            raise NotApplicable("no structure at this rho")
        raise StructbenchError("model.safetensors is missing")

    suite, writer, ctx = stub_run(run_case, 2)
    run_suite(suite, writer, ctx)
    rows = load_run(writer.run_dir).rows
    assert [(r["status"], r["reason"]) for r in rows] == [
        ("skipped", "no structure at this rho"), ("error", "StructbenchError: model.safetensors is missing")]
    assert "Traceback" in capsys.readouterr().err
