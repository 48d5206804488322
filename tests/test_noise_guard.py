"""The kernels noise guard: the dense-vs-dense control and the share of noisy rows mark a run
``unreliable`` (run.json, report banner, terminal), ``compare`` refuses such runs unless
``--force``, and ``--retry-noisy`` measures a noisy case again."""
from __future__ import annotations

from pathlib import Path

import pytest

import suites.kernels.suite as kernels
from structbench.cli import main
from structbench.measure.timing import Timing
from structbench.results import load_run

TINY = """\
families: [lowrank]
shapes: {tiny: [32, 32]}
rhos: [0.5]
tokens: [4, 8]
min_run_time: 0.01
rounds: 6
"""


def _row(family: str, speedup: float, noisy: bool = False, tokens: int = 4, dense_s: float = 0.01) -> dict:
    return {"status": "ok", "family": family, "shape": "s", "tokens": tokens, "mode": "eager", "speedup": speedup,
            "noisy": noisy, "dense_median_s": dense_s}


@pytest.mark.parametrize(("rows", "expected"), [
    ([_row("dense", 1.02), _row("lowrank", 2.0)], []),
    ([_row("dense", 0.62), _row("lowrank", 2.0)], ["dense-vs-dense control at s, 4 tokens, eager: speedup 0.62"]),
    ([_row("dense", 1.3), _row("lowrank", 2.0)], ["speedup 1.30, outside [0.9, 1.1]"]),
    ([_row("dense", 0.8, dense_s=2e-5), _row("lowrank", 2.0)], []),  # a 20 us call: the module's overhead, not noise
    ([_row("dense", 0.8, dense_s=1e-3), _row("lowrank", 2.0)], ["speedup 0.80"]),
    ([_row("dense", 1.0), _row("lowrank", 2.0, True), _row("blast", 1.0)], []),  # 1 of 3: not more than a third
    ([_row("dense", 1.0, True), _row("lowrank", 2.0, True), _row("blast", 1.0)], ["2 of 3 rows noisy"]),
    ([{"status": "skipped", "family": "dense"}], []),
])
def test_assess_reads_the_control_and_the_noisy_share(rows: list[dict], expected: list[str]) -> None:
    reasons = kernels.assess(rows)
    assert len(reasons) == len(expected) and all(e in r for e, r in zip(expected, reasons))


def _config(tmp_path: Path) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(TINY)
    return str(path)


def _fake_times(medians: list[tuple[float, float]]):  # noqa: ANN202 - a stand-in for interleaved()
    """``interleaved`` returning (family, dense) medians from ``medians`` in turn; a pair with a
    negative family median is a noisy measurement (the family's blocks spread, dense's do not,
    so the paired ratios spread too)."""
    calls = iter(medians)

    def times(fns, threads, min_run_time, rounds, **policy):  # noqa: ANN001, ANN003
        fam, dense = next(calls)
        spread = [0.5, 1.0, 1.5] if fam < 0 else [0.99, 1.0, 1.01]  # the family's own noise, not shared drift
        return {"family": Timing([abs(fam) * s for s in spread]), "dense": Timing([dense * s for s in [0.99, 1.0, 1.01]])}

    return times


def test_a_run_whose_control_is_off_is_marked_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # dense 4 tokens: speedup 0.5 (interference); the rest as on a quiet machine
    monkeypatch.setattr(kernels, "interleaved", _fake_times([(2e-3, 1e-3), (1e-3, 2e-3), (1e-3, 1e-3), (1e-3, 2e-3)]))
    out = tmp_path / "results"
    assert main(["--suite", "kernels", "--config", _config(tmp_path), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: this run is marked unreliable: dense-vs-dense control at tiny, 4 tokens, eager" in err
    assert err.count("dense-vs-dense control at tiny, 4 tokens, eager") == 1  # said once, not per reason and again
    (run_dir,) = (out / "kernels").iterdir()
    run = load_run(run_dir)
    assert run.meta["reliability"]["unreliable"] and len(run.meta["reliability"]["reasons"]) == 1
    page = (run_dir / "report.html").read_text()
    assert "class='unreliable'" in page and page.index("Unreliable run") < page.index("<table class='meta'>")
    # compare refuses it, unless forced
    monkeypatch.setattr(kernels, "interleaved", _fake_times([(1e-3, 1e-3), (1e-3, 2e-3)] * 2))
    assert main(["--suite", "kernels", "--config", _config(tmp_path), "--out", str(tmp_path / "quiet")]) == 0
    (quiet,) = (tmp_path / "quiet" / "kernels").iterdir()
    assert not load_run(quiet).meta["reliability"]["unreliable"]
    assert "class='unreliable'" not in (quiet / "report.html").read_text()
    capsys.readouterr()
    assert main(["compare", str(quiet), str(run_dir)]) == 2
    refusal = capsys.readouterr().err
    assert "is marked unreliable" in refusal and "pass --force to compare anyway" in refusal
    assert main(["compare", str(quiet), str(run_dir), "--force"]) == 0


def test_retry_noisy_measures_a_noisy_case_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # each case: noisy first, then quiet; with --retry-noisy 1 every row is the quiet second try
    monkeypatch.setattr(kernels, "interleaved", _fake_times([(-1e-3, 1e-3), (1e-3, 1e-3)] * 4))
    out = tmp_path / "results"
    assert main(["--suite", "kernels", "--config", _config(tmp_path), "--out", str(out), "--retry-noisy", "1"]) == 0
    (run_dir,) = (out / "kernels").iterdir()
    rows = load_run(run_dir).rows
    assert [r["attempts"] for r in rows] == [2, 2, 2, 2] and not any(r["noisy"] for r in rows)
    # without retries the noisy first measurement is kept, and the run says so
    monkeypatch.setattr(kernels, "interleaved", _fake_times([(-1e-3, 1e-3)] * 4))
    assert main(["--suite", "kernels", "--config", _config(tmp_path), "--out", str(tmp_path / "once")]) == 0
    (once,) = (tmp_path / "once" / "kernels").iterdir()
    run = load_run(once)
    assert all(r["noisy"] and r["attempts"] == 1 for r in run.rows)
    assert "4 of 4 rows noisy" in run.meta["reliability"]["reasons"][0]


def test_rounds_go_on_until_the_speedup_interval_is_tight_or_the_time_cap_is_hit() -> None:
    from itertools import count

    from structbench.measure.timing import interleaved

    ticks = count()
    fns = {"family": lambda: next(ticks), "dense": lambda: next(ticks)}
    # enough once 20 samples of each are in: stops right there, well before the cap
    done = interleaved(fns, threads=1, min_run_time=1e-4, rounds=6, until=lambda s: len(s["dense"]) >= 20,
                       max_seconds=60.0)
    assert done["family"].runs == done["dense"].runs == 20
    # never enough: the cap ends it, after the minimum rounds and an even number more
    capped = interleaved(fns, threads=1, min_run_time=1e-4, rounds=6, until=lambda s: False, max_seconds=0.05)
    assert capped["family"].runs > 6 and (capped["family"].runs - 6) % 2 == 0
    # no policy: exactly the minimum
    assert interleaved(fns, threads=1, min_run_time=1e-4, rounds=6)["dense"].runs == 6


def test_the_speedup_is_the_median_paired_ratio_with_an_interval_and_noisy_means_too_wide() -> None:
    dense = Timing([2.0, 2.2, 1.8, 2.0, 2.1, 1.9, 2.0, 2.0, 2.0, 2.0])
    tight = Timing([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.0, 1.0, 1.0])  # drifts with dense: ratio 2
    speedup, low, high = kernels.speedup_interval(dense, tight)
    assert speedup == pytest.approx(2.0) and low <= 2.0 <= high and kernels._precise(speedup, low, high, 0.05)
    loose = Timing([1.0, 0.5, 1.5, 0.8, 1.2, 0.6, 1.4, 1.0, 0.7, 1.3])
    speedup, low, high = kernels.speedup_interval(dense, loose)
    assert not kernels._precise(speedup, low, high, 0.05) and low < speedup < high
