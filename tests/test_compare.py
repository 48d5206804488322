"""bench.py compare: ratios per case, flagged only beyond the factor AND past the rank test."""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest

from structbench.cli import main
from structbench.compare import compare_runs, mann_whitney_p
from structbench.results import RunWriter, load_run
from suites import SUITES

KERNELS = SUITES.get("kernels")
SUITE = SimpleNamespace(name="kernels", version="1", description="synthetic", metrics=KERNELS.metrics, schema=KERNELS.schema, about=None)


def test_mann_whitney_p_on_known_values() -> None:
    # n1 = n2 = 3, complete separation, no ties: exact; U = 0 is 1 of C(6, 3) = 20 equally likely
    # splits, and so is U = 9 on the other side, so p = 2 / 20
    assert mann_whitney_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    # with ties the normal approximation with tie and continuity corrections: U = 0.5 (the tied
    # 3s share rank 3.5), mean 4.5, variance (9 / 12) (7 - (2^3 - 2) / 30)
    z = (4.0 - 0.5) / math.sqrt(9 / 12 * (7 - 6 / 30))
    assert mann_whitney_p([1, 2, 3], [3, 5, 6]) == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert mann_whitney_p([1, 1, 1], [1, 1, 1]) == 1.0  # all ties: no evidence
    assert mann_whitney_p([], [1.0]) == 1.0
    assert mann_whitney_p([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)


JITTER = [1 + 0.01 * ((i * 7) % 5 - 2) for i in range(12)]  # +-2 %, twelve samples
SPREAD = [i / 6.5 for i in range(1, 13)]  # 1..12 around a median of 1
SAMPLES_A = {"slow2x": JITTER, "same": JITTER, "small": JITTER, "noisy": SPREAD}
SAMPLES_B = {"slow2x": [2 * v for v in JITTER], "same": JITTER[::-1], "small": [1.05 * v for v in JITTER],
             "noisy": [v / 6.5 for v in (1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14)]}  # median x1.31, ranks overlap


def _write_run(root: Path, samples: dict[str, list[float]]) -> Path:
    """One synthetic kernels run: case -> per-call seconds (in milliseconds)."""
    writer = RunWriter.create(root, SUITE, {}, {"device": "cpu", "dtype": "float32", "threads": 1}, 0)
    rows = [{"family": family, "shape": "s", "out_features": 8, "in_features": 8, "rho": 0.5, "tokens": 4,
             "mode": "eager", "dtype": "float32", "status": "ok", "case_key": family,
             "median_s": statistics.median(s) * 1e-3, "samples_s": [v * 1e-3 for v in s]} for family, s in samples.items()]
    rows.append({"family": "broken", "shape": "s", "rho": 0.5, "tokens": 4, "mode": "eager", "status": "error", "case_key": "x"})
    writer.append(rows)
    writer.finish("complete")
    return writer.run_dir


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    return _write_run(root / "a", SAMPLES_A), _write_run(root / "b", SAMPLES_B)


def test_only_a_clear_change_beyond_the_factor_is_flagged(two_runs: tuple[Path, Path]) -> None:
    table = compare_runs(load_run(two_runs[0]), load_run(two_runs[1]), threshold=1.1, alpha=0.01).set_index("family")
    assert set(table.index) == {"slow2x", "same", "small", "noisy"}  # error rows are not compared
    assert table.loc["slow2x", "ratio"] == pytest.approx(2.0, rel=0.05) and table.loc["slow2x", "flag"] == "slower"
    assert table.loc["small", "p_value"] < 0.01 and table.loc["small", "flag"] == ""  # real, but within x1.1
    assert table.loc["noisy", "ratio"] > 1.3 and table.loc["noisy", "p_value"] > 0.01 and table.loc["noisy", "flag"] == ""  # beyond x1.1 by noise only
    assert table.loc["same", "flag"] == ""
    reverse = compare_runs(load_run(two_runs[1]), load_run(two_runs[0])).set_index("family")
    assert reverse.loc["slow2x", "flag"] == "faster" and (reverse["flag"] != "").sum() == 1


def test_compare_command_prints_ratios_and_a_verdict(two_runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(two_runs[0]), str(two_runs[1])]) == 0
    out = capsys.readouterr().out
    assert "slower" in out and "ratio" in out
    assert "1 of 4 cases changed beyond x1.1 (p < 0.01)" in out


def test_compare_rejects_runs_without_common_cases(tmp_path: Path, two_runs: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    other = _write_run(tmp_path, {"elsewhere": JITTER})
    assert main(["compare", str(two_runs[0]), str(other)]) == 2
    assert capsys.readouterr().err.startswith("error: compare: the two runs share no measured case")


def _train_run(root: Path, ppl: dict[str, float]) -> Path:
    """A synthetic train-lm run: headline metrics without raw samples."""
    suite = SUITES.get("train-lm")
    writer = RunWriter.create(root, suite, {}, {"device": "cpu", "dtype": "float32", "threads": 1}, 0)
    writer.append([{"family": f, "rho": 0.5, "status": "ok", "case_key": f, "val_ppl": v, "val_loss": math.log(v)}
                   for f, v in ppl.items()])
    writer.finish("complete")
    return writer.run_dir


def test_compare_reads_any_suite_from_its_stored_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _train_run(tmp_path / "a", {"lowrank": 10.0, "blast": 8.0})
    b = _train_run(tmp_path / "b", {"lowrank": 20.0, "blast": 8.1})
    table = compare_runs(load_run(a), load_run(b)).set_index(["family", "metric"])
    assert set(table.index) == {(f, m) for f in ("lowrank", "blast") for m in ("val_ppl", "val_loss")}
    assert table.loc[("lowrank", "val_ppl"), "ratio"] == pytest.approx(2.0)
    assert table.loc[("lowrank", "val_ppl"), "flag"] == "worse" and math.isnan(table.loc[("lowrank", "val_ppl"), "p_value"])
    assert table.loc[("blast", "val_ppl"), "flag"] == ""  # x1.0125: within the factor
    assert main(["compare", str(a), str(b)]) == 0
    assert "val_ppl: 1 of 2 cases changed beyond x1.1 (no samples: ratio alone)" in capsys.readouterr().out


def test_compare_refuses_runs_of_two_suites(tmp_path: Path, two_runs: tuple[Path, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    other = _train_run(tmp_path, {"lowrank": 10.0})
    assert main(["compare", str(two_runs[0]), str(other)]) == 2
    assert "compare two runs of one suite" in capsys.readouterr().err
