"""``--shard I/N`` runs a deterministic part of a run's cases; ``bench.py merge`` puts the
shards back together into the run a single machine would have made."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from structbench.cli import main
from structbench.results import load_run

TINY = {  # synthetic projections and the BLAST convergence cases that read a GD sweep
    "families": ["lowrank", "blockdiag", "blast"], "rhos": [0.25, 0.5], "projection": {"blast": {"steps": 5}},
    "synthetic": {"kinds": ["gaussian", "lowrank-noise", "blockdiag"], "sizes": [[32, 64]], "seeds": [0, 1]},
    "real": {}, "quick": {},
    "convergence": {"size": [32, 32], "blocks": 2, "true_rank": 2, "ranks": [2], "methods": ["precgd", "gd"],
                    "steps": 10, "delta0": 0.1, "lr": {"precgd": 1.0, "gd": "auto"}, "gd_lr_sweep": [0.01, 0.1],
                    "seeds": [0], "sweep_rank": 2, "delta0_sweep": [0.1], "steps_sweep": [5]},
}
DETERMINISTIC = ("case_key", "status", "rel_error", "rho_actual", "hparams", "lr_used")


def _run(tmp_path: Path, out: str, *extra: str) -> Path:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    assert main(["--suite", "approx", "--config", str(config), "--out", str(tmp_path / out), "--threads", "1", *extra]) == 0
    (run_dir,) = (tmp_path / out / "approx").iterdir()
    return run_dir


def _table(run_dir: Path) -> dict[str, tuple]:
    return {r["case_key"]: tuple(r.get(k) for k in DETERMINISTIC) for r in load_run(run_dir).rows}


def test_merged_shards_equal_the_serial_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    serial = _run(tmp_path, "serial")
    parts = [_run(tmp_path, f"shard{i}", "--shard", f"{i}/2") for i in range(2)]
    sizes = [len(load_run(p).rows) for p in parts]
    assert all(sizes) and sum(sizes) == len(load_run(serial).rows)  # a real split, nothing lost
    assert main(["merge", *map(str, parts), "--out", str(tmp_path / "merged")]) == 0
    (merged,) = (tmp_path / "merged" / "approx").iterdir()
    run = load_run(merged)
    assert run.meta["status"] == "complete" and len(run.meta["merged_from"]) == 2
    assert _table(merged) == _table(serial)
    assert (merged / "report.html").is_file() and "approx: " in capsys.readouterr().out

    # one shard alone is an unfinished run; the same shard twice, or shards of other runs, are refused
    assert main(["merge", str(parts[0]), "--out", str(tmp_path / "half")]) == 0
    (half,) = (tmp_path / "half" / "approx").iterdir()
    assert load_run(half).meta["status"] == "interrupted"
    capsys.readouterr()
    assert main(["merge", str(parts[0]), str(parts[0]), "--out", str(tmp_path / "x")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["merge", str(parts[0]), str(serial), "--out", str(tmp_path / "x")]) == 2
    assert "another shard count" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/2"])
def test_a_bad_shard_is_one_line(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--suite", "kernels", "--shard", text, "--out", str(tmp_path)]) == 2
    assert "--shard" in capsys.readouterr().err
