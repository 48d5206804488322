"""``--executor ray``: the same rows as the serial run, the driver the only writer, and a case
whose worker dies re-run by Ray with nothing doubled. Skipped where Ray is not installed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # each test starts a Ray cluster (seconds) or waits on a refused address

from structbench.cli import main  # noqa: E402
from structbench.results import PROJECT_ROOT, load_run  # noqa: E402
from structbench.runner import run_suite  # noqa: E402
from structbench.suite import RunContext  # noqa: E402
from tests.test_shards import DETERMINISTIC, TINY  # noqa: E402


def _table(run_dir: Path) -> dict[str, tuple]:
    return {r["case_key"]: tuple(r.get(k) for k in DETERMINISTIC) for r in load_run(run_dir).rows}


@pytest.mark.parametrize("address", ["127.0.0.1:1", "no-such-host.invalid:6379", "not-an-address"])
def test_a_bad_ray_address_is_one_line_and_leaves_no_run(tmp_path: Path, address: str) -> None:
    from structbench.ray_executor import CONNECT_TIMEOUT_S

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench.py", "--suite", "kernels", "--quick", "--out", str(out),
                           "--executor", "ray", "--ray-address", address], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=CONNECT_TIMEOUT_S + 30)  # Ray alone retries for minutes
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: cannot connect to Ray at {address}")
    assert not out.exists()  # no run folder, so nothing left 'running'


def test_ray_gives_the_serial_rows(tmp_path: Path) -> None:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    runs = {}
    for name, extra in (("serial", []), ("ray", ["--executor", "ray", "--workers", "2"])):
        assert main(["--suite", "approx", "--config", str(config), "--out", str(tmp_path / name), "--threads", "1",
                     *extra]) == 0
        (runs[name],) = (tmp_path / name / "approx").iterdir()
    assert _table(runs["ray"]) == _table(runs["serial"])
    ray_run, serial_run = load_run(runs["ray"]), load_run(runs["serial"])
    assert all(r["worker"] for r in ray_run.rows) and ray_run.meta["status"] == "complete"
    assert ray_run.meta["executor"]["name"] == "ray" and ray_run.meta["executor"]["workers"] == 2
    assert serial_run.meta["executor"] == {"name": "serial", "workers": 1}


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


# Enough short kernels cases that a run is still busy when the signal comes, on any machine.
MANY_KERNELS = ("families: [lowrank, blockdiag]\nshapes: {tiny: [64, 64]}\nrhos: [0.5]\n"
                f"tokens: {list(range(1, 41))}\nmin_run_time: 0.05\nrounds: 4\n")
SIGNAL_TRIES = 20


def _stop_mid_run(config: Path, out: Path, signum: int, delay: float) -> str | None:
    """One Ray run of ``bench.py``, sent ``signum`` ``delay`` s after its first row: what went wrong, or None."""
    log = out.with_suffix(".log")
    with log.open("wb") as err:
        proc = subprocess.Popen(  # SIGINT as a terminal sends it, even where this test's own is ignored
            [sys.executable, "bench.py", "--suite", "kernels", "--config", str(config), "--out", str(out),
             "--threads", "1", "--executor", "ray", "--workers", "1"], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
            stderr=err, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
        try:
            deadline = time.monotonic() + 180
            while not any(p.stat().st_size for p in out.glob("kernels/*/rows.jsonl")):
                if proc.poll() is not None or time.monotonic() > deadline:
                    return f"no row before the signal (exit {proc.poll()})"
                time.sleep(0.05)
            time.sleep(delay)
            proc.send_signal(signum)
            code = proc.wait(timeout=120)
        finally:
            proc.kill()
    (run_dir,) = (out / "kernels").iterdir()
    run = load_run(run_dir)
    expected = 143 if signum == signal.SIGTERM else 130
    problems = [f"exit {code}, not {expected}"] * (code != expected)
    problems += [f"status {run.meta['status']}"] * (run.meta["status"] != "interrupted")
    problems += ["no report.html"] * (not (run_dir / "report.html").is_file())
    problems += ["no row kept"] * (not run.rows or run.meta["n_done"] != len({r["case_key"] for r in run.rows}))
    return "; ".join(problems) + f" (see {log})" if problems else None


@pytest.mark.timeout(900)  # SIGNAL_TRIES runs, each starting a Ray instance
def test_a_signal_stops_a_ray_run_as_cleanly_as_a_serial_one(tmp_path: Path) -> None:
    """SIGTERM (a scheduler) or SIGINT (Ctrl-C) while Ray tasks run, at varied moments: exit
    143 / 130, the run ``interrupted`` with its report and every finished row, every time."""
    config = tmp_path / "many.yaml"
    config.write_text(MANY_KERNELS)
    for attempt in range(SIGNAL_TRIES):
        signum = (signal.SIGTERM, signal.SIGINT)[attempt % 2]
        problem = _stop_mid_run(config, tmp_path / f"try{attempt}", signum, delay=0.15 * (attempt % 7))
        assert problem is None, f"try {attempt + 1} of {SIGNAL_TRIES} ({signal.Signals(signum).name}): {problem}"
