"""Bad input and faults a user can cause: each gets one ``error:`` line (exit 2) or the stated
outcome, and nothing already written is lost."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from structbench import launch
from structbench.cli import main
from structbench.results import load_run

TINY = """\
families: [lowrank]
shapes: {tiny: [32, 32]}
rhos: [0.5]
tokens: [4]
min_run_time: 0.01
rounds: 6
"""


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _config(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


@pytest.mark.parametrize(("text", "expected"), [
    ("families: [lowrank]\nshapes: {tiny: [32, 32]}\nrhos: [0.5]\ntokens: [4]\n".encode("utf-16"), "is not UTF-8 text"),
    (TINY + "modes: []\n", "modes must be a non-empty list"),
    (TINY.replace("min_run_time: 0.01", "min_run_time: .inf"), "finite"),
    (TINY.replace("families: [lowrank]", "families: [lowrank, lowrank]"), "lists lowrank more than once"),
    (TINY.replace("rhos: [0.5]", "rhos: [0.5, 0.5]"), "lists 0.5 more than once"),
    (TINY.replace("tokens: [4]", "tokens: [4, 4]"), "lists 4 more than once"),
    (TINY + "modes: [eager, eager]\n", "lists eager more than once"),
    (TINY + "hold_heap: sometimes\n", "hold_heap must be true or false"),
])
def test_bad_config_values_are_one_line(text: str | bytes, expected: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    assert main(["--suite", "kernels", "--config", _config(tmp_path, text), "--out", str(out)]) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert not out.exists()  # nothing written


@pytest.mark.parametrize(("text", "key", "line"), [
    (TINY + "tokens: [8]\n", "tokens", 7),
    (TINY.replace("{tiny: [32, 32]}", "{tiny: [32, 32], tiny: [64, 64]}"), "tiny", 2),
])
def test_a_key_given_twice_in_a_config_is_one_line(text: str, key: str, line: int, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, text)
    assert main(["--suite", "kernels", "--config", path, "--out", str(tmp_path / "results")]) == 2
    error = one_error_line(capsys.readouterr().err)
    assert f"key {key!r} given twice" in error and path in error and f"line {line}" in error
    assert not (tmp_path / "results").exists()


def test_a_key_given_twice_in_a_set_value_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--suite", "kernels", "--config", _config(tmp_path, TINY), "--out", str(tmp_path / "results"),
                 "--set", "shapes={a: [32, 32], a: [64, 64]}"]) == 2
    assert "key 'a' given twice" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(("suite", "assignment", "expected"), [
    ("kernels", "tokens=[1000000000000]", "shape 'tiny' [32, 32] at tokens 1000000000000 needs at least"),
    ("kernels", "shapes={big: [10000000, 10000000]}", "shape 'big' [10000000, 10000000] at tokens 4 needs at least"),
    ("kernels", "tokens=[100000000000000000000]", "tokens must be a non-empty list of integers in (0.0, 2**63 - 1]"),
    ("approx", "synthetic.sizes=[[10000000, 10000000]]", "synthetic.sizes[0] [10000000, 10000000] needs at least"),
    ("approx", "synthetic.seeds=[100000000000000000000]", "seeds must be a non-empty list of integers"),
    ("train-lm", "model.dim=10000000", "train-lm: the dense model"),
    ("train-vision", "recipe.batch_size=1000000000000", "at batch_size 1000000000000 needs at least"),
    ("train-lm", "recipe.steps=100000000000000000000", "steps must be a positive integer (at most 2**63 - 1)"),
])
def test_sizes_no_case_could_allocate_are_one_line_before_any_folder(suite: str, assignment: str, expected: str,
                                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = ["--config", _config(tmp_path, TINY)] if suite == "kernels" else ["--quick"]
    out = tmp_path / "results"
    assert main(["--suite", suite, *config, "--set", assignment, "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert expected in line and ("more than this machine has" in line or "2**63" in line or "integers" in line)
    assert not out.exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["--families", ","], "names no family"),
    (["--families", " , "], "names no family"),
])
def test_bad_flags_are_one_line(args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--suite", "kernels", "--config", _config(tmp_path, TINY), "--out", str(tmp_path / "r"), *args]) == 2
    assert expected in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("where", ["file", "under-a-file", "/proc/structbench-results"])
def test_an_unwritable_out_names_the_path(where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("not a folder")
    out = {"file": tmp_path / "file", "under-a-file": tmp_path / "file" / "sub"}.get(where, Path(where))
    assert main(["--suite", "kernels", "--config", _config(tmp_path, TINY), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cannot write" in line and str(out) in line


@pytest.fixture()
def finished(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    assert main(["--suite", "kernels", "--config", _config(tmp_path, TINY), "--out", str(out), "--threads", "1"]) == 0
    return out


@pytest.mark.parametrize(("flag", "value"), [("--device", "tpu"), ("--dtype", "float8")])
def test_resume_refuses_options_it_would_ignore(flag: str, value: str, finished: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (run_dir,) = (finished / "kernels").iterdir()
    assert main(["--resume", str(run_dir), flag, value]) == 2
    assert f"drop {flag}" in one_error_line(capsys.readouterr().err)


def test_a_corrupt_run_elsewhere_is_skipped_with_its_name(finished: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    broken = finished / "kernels" / "20200101-000000-cpu-broken"
    broken.mkdir()
    (broken / "run.json").write_text('{"suite": {"name": "kernels"')  # cut short
    capsys.readouterr()
    assert main(["report", "--out", str(finished)]) == 0
    err = capsys.readouterr().err
    assert "warning: skipping unreadable run.json" in err and str(broken / "run.json") in err
    # a new run still finishes, with its report and the index
    assert main(["--suite", "kernels", "--config", _config(tmp_path, TINY), "--out", str(finished)]) == 0
    assert (finished / "index.html").is_file()
    assert main(["report", str(broken)]) == 2  # named on its own, it is an error line
    assert "unreadable run.json" in capsys.readouterr().err.splitlines()[-1]


def test_a_truncated_plotly_is_rewritten(finished: Path) -> None:
    (plotly,) = finished.glob("plotly-*.min.js")
    size = plotly.stat().st_size
    plotly.write_text("truncated")  # what a full disk left
    assert main(["report", "--out", str(finished)]) == 0
    assert plotly.stat().st_size == size and not list(finished.glob(".plotly*"))


def test_a_second_ctrl_c_while_publishing_still_leaves_a_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = launch.publish
    hits: list[str] = []

    def interrupted_publish(run_dirs) -> None:  # noqa: ANN001 - the CLI's own callable
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C again while the report is written
        hits.append("published")
        real(run_dirs)

    monkeypatch.setattr(launch, "publish", interrupted_publish)
    out = tmp_path / "results"
    assert main(["--suite", "kernels", "--config", _config(tmp_path, TINY), "--out", str(out)]) == 0
    (run_dir,) = (out / "kernels").iterdir()
    assert hits == ["published"] and (run_dir / "report.html").is_file() and (out / "index.html").is_file()


@pytest.mark.parametrize("mode", ["cuda-graph", "triton"])
def test_a_run_with_no_ok_case_exits_1_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str) -> None:
    gpu_only = TINY + f"modes: [{mode}]\n"  # on a CPU every case, the dense control too, is skipped
    out = tmp_path / "results"
    assert main(["--suite", "kernels", "--config", _config(tmp_path, gpu_only), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "0 ok, 2 skipped, 0 error" in captured.out and f"skipped x2: mode {mode} needs --device cuda" in captured.out
    assert captured.err.strip().endswith("error: no case finished ok (see the reasons above)")
    (run_dir,) = (out / "kernels").iterdir()
    assert (run_dir / "report.html").is_file()  # the rows are still published


def test_the_summary_shows_counts_and_the_headline_table(finished: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--suite", "kernels", "--config", _config(tmp_path, TINY), "--out", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert "kernels: 2 rows: 2 ok, 0 skipped, 0 error" in out and "geomean_speedup" in out and "lowrank" in out
    (run_dir,) = (tmp_path / "again" / "kernels").iterdir()
    rows = load_run(run_dir).rows
    assert all(r["load_start"] >= 0 and r["load_end"] >= 0 for r in rows)  # machine load per case


def test_train_vision_without_its_data_stops_before_any_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tv.json"
    config.write_text(json.dumps({"include": str(Path(__file__).parents[1] / "suites" / "train_vision" / "default.yaml"),
                                  "data": {"root": str(tmp_path / "nowhere")}}))
    out = tmp_path / "results"
    assert main(["--suite", "train-vision", "--quick", "--config", str(config), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "not found under" in line and "apt-get install" in line and not out.exists()


@pytest.mark.parametrize("where", ["file", "/proc/structbench-results"])
def test_report_into_an_unwritable_out_is_one_line(where: str, finished: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (run_dir,) = (finished / "kernels").iterdir()
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" if where == "file" else Path(where)
    capsys.readouterr()
    assert main(["report", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cannot write" in line and str(out) in line
    assert main(["report", str(run_dir), "--out", str(out)]) == 2
    assert "not both" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("command", [["--suite", "kernels"], ["report"], ["merge", "RUN"]])
def test_an_empty_out_is_refused_not_the_current_folder(command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    args = [*command, "--out", ""] + (["--config", _config(tmp_path, TINY)] if command[0] == "--suite" else [])
    assert main([str(tmp_path) if a == "RUN" else a for a in args]) == 2
    assert "argument --out: empty path" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["c.yaml"] if command[0] == "--suite" else [])


def test_report_of_a_run_folder_indexes_where_the_run_lives(finished: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (run_dir,) = (finished / "kernels").iterdir()
    (finished / "index.html").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["report", str(run_dir)]) == 0
    assert (finished / "index.html").is_file() and not list(elsewhere.iterdir())  # no stray ./results


def test_a_config_that_is_a_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--suite", "kernels", "--config", str(tmp_path), "--out", str(tmp_path / "results")]) == 2
    assert f"config {tmp_path} is a folder; give a YAML file" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(("args", "expected"), [
    (["--executor", "ray", "--workers", "0"], "--workers must be >= 1"),
    (["--seed", str(2**70)], "--seed must be an integer in 0..9223372036854775807"),
    (["--seed", "-1"], "--seed must be an integer in 0..9223372036854775807"),
    (["--threads", "100000"], "--threads must be in 1..1024"),
])
def test_a_refused_start_leaves_no_run_folder(args: list[str], expected: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    assert main(["--suite", "kernels", "--config", _config(tmp_path, TINY), "--out", str(out), *args]) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert not out.exists()
