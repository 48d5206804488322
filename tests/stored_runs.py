"""Stored runs for the report tests, made without measuring anything: a suite's own config and
case expansion with a ``run_case`` that invents plausible numbers, written by the real run
store, so the rows and ``run.json`` have the shape the suite gives them. ``poison`` turns a
run folder's every shown string into a script-injection payload, as a hostile folder would.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterable

from structbench.config import load_config, resolve
from structbench.results import RunWriter
from structbench.runner import run_suite
from structbench.suite import RunContext
from suites import SUITES

IMG = "<img src=x onerror=\"document.body.dataset.pwned='yes'\">"
SCRIPT = "</script><script>document.body.dataset.pwned='yes'</script>"
PAYLOAD = IMG + SCRIPT

CaseFn = Callable[[dict[str, Any], RunContext], list[dict[str, Any]]]


def _rank(case: dict[str, Any]) -> int:
    """A small number per family, so invented metrics differ between families."""
    return sum(map(ord, str(case.get("family", "")))) % 7


def llama_compress_case(case: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    rho, k = float(case["rho"]), _rank(case)
    kept = rho if case["family"] == "dense" else rho - 0.01 * k
    tasks = {"social_iqa": 1 / 3, "quartz": 1 / 2}
    ppl = 20.0 / rho + k - (2.0 if case["retrained"] else 0.0)
    row: dict[str, Any] = {"perplexity": ppl, "ppl_low": 0.97 * ppl, "ppl_high": 1.03 * ppl, "ppl_tokens": 511,
                           "ppl_windows": 2, "ppl_seconds": 3.0, "tasks_seconds": 5.0,
                           "calibration_mode": None if case["objective"] != "calibrated" else "dense"}
    if case["retrained"]:
        row.update({"retrain_loss_first": 3.0, "retrain_loss_last": 2.5})
    for label, chance in tasks.items():
        row.update({f"acc_{label}": chance + 0.05 * rho, f"acc_norm_{label}": chance + 0.04 * rho,
                    f"acc_stderr_{label}": 0.02, f"acc_norm_stderr_{label}": 0.02,
                    f"chance_{label}": chance, f"items_{label}": 8})
    row.update({"acc_avg": 0.3 + 0.1 * rho, "acc_norm_avg": 0.3 + 0.08 * rho, "rho_actual": kept,
                "cr": 1 - kept, "params": int(1e6 * (0.5 + rho)), "bytes": int(4e6 * (0.5 + rho)),
                "linear_params": int(1e6 * rho), "macs_ratio": rho, "macs_per_token": 1e6 * rho,
                "prefill_tokens_per_s": 900.0 + 10 * k, "generate_tokens_per_s": 40.0 + k,
                "generate_spread": 0.3 if k % 2 else 0.02, "generate_noisy": bool(k % 2),
                "rel_error_mean": 1 - rho, "weighted_error_mean": (1 - rho) / 2})
    return [row]


def train_case(case: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    rho, k = float(case["rho"]), _rank(case)
    score = 3.0 + k / 10 + 1 / rho + 0.05 * case.get("seed", 0)  # seeds differ a little
    return [{"val_ppl": score, "val_loss": 1.0, "val_bpb": 1.4, "rho_actual": rho, "macs_ratio": rho,
             "model_macs_ratio": 0.5 + rho / 2, "macs": int(1e6 * rho), "params": int(1e5 * rho) + k,
             "train_seconds": 1.0, "steps": 4, "hparams": {"rank": 4},
             "curves": {"step": [2, 4], "val_ppl": [score + 1, score], "train_loss": [2.0, 1.5]}}]


def fake_run(out: Path, suite_name: str, run_case: CaseFn, *, quick: bool = True, sets: Iterable[str] = (),
             families: list[str] | None = None, stop_after: int | None = None, assess: bool = True) -> Path:
    """A run of ``suite_name``'s resolved config whose cases ``run_case`` answers; with
    ``stop_after`` the run is interrupted (as Ctrl-C would) after that many cases."""
    suite = SUITES.get(suite_name)
    config = resolve(suite_name, load_config(suite.config_path), suite.validate, quick=quick, families=families,
                     sets=list(sets))
    calls = 0

    def answer(case: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
        nonlocal calls
        if stop_after is not None and calls >= stop_after:
            raise KeyboardInterrupt
        calls += 1
        return run_case(case, ctx)

    faked = dataclasses.replace(suite, run_case=answer, assess=suite.assess if assess else None)
    cli = {"device": "cpu", "dtype": "float32", "threads": 1, "quick": quick, "seed": 0,
           "families": ",".join(families) if families else None}
    writer = RunWriter.create(out, faked, config, cli, 0)
    ctx = RunContext(device="cpu", dtype="float32", threads=1, seed=0, quick=quick, run_dir=writer.run_dir,
                     cache_dir=out / "cache", config=config)
    try:
        run_suite(faked, writer, ctx)
    except KeyboardInterrupt:
        pass
    finally:
        writer.close()
    return writer.run_dir


def approx_run(out: Path) -> Path:
    """A small synthetic-only approx run, measured for real through the CLI (seconds)."""
    from structbench.cli import main

    config = out.parent / "approx.yaml"
    config.write_text(json.dumps({
        "families": ["lowrank", "blockdiag", "monarch"], "rhos": [0.25, 0.5], "objectives": ["frobenius"],
        "synthetic": {"kinds": ["gaussian", "blockdiag"], "sizes": [[32, 32]], "seeds": [0]}, "real": {}}))
    assert main(["--suite", "approx", "--config", str(config), "--out", str(out), "--threads", "1"]) == 0
    (run_dir,) = (out / "approx").iterdir()
    return run_dir


def _poisoned(value: Any, keep: frozenset[str], names_below: int, depth: int = 0) -> Any:
    """Every string ``value`` holds with the payload appended (a suffix keeps distinct names
    distinct); dict keys too from nesting depth ``names_below`` on (where keys are names, such
    as the kinds of approx's ``about``, that rows refer to)."""
    if isinstance(value, str):
        return value + PAYLOAD
    if isinstance(value, list):
        return [_poisoned(v, keep, names_below, depth + 1) for v in value]
    if isinstance(value, dict):
        return {(k + PAYLOAD if depth >= names_below and isinstance(k, str) else k):
                (v if k in keep else _poisoned(v, keep, names_below, depth + 1)) for k, v in value.items()}
    return value


def poison(run_dir: Path, keep: Iterable[str] = ()) -> None:
    """Append the payload to every string of ``run_dir``'s rows (but ``status``, ``case_key``
    and the fields in ``keep``, which a report matches on) and of its ``run.json`` (but the
    suite name, its status, the stored schema and the metric names; the names in ``about`` are poisoned
    alike, so rows still find them), add a payload column, and mark the
    run unreliable for a payload reason."""
    keep = frozenset({"status", "case_key", *keep})
    meta = json.loads((run_dir / "run.json").read_text())
    suite, schema, metrics, about, status = (meta.pop(k) for k in ("suite", "schema", "metrics", "about", "status"))
    meta = {**_poisoned(meta, frozenset(), names_below=99), "status": status}  # a status outside the schema is refused
    meta["about"] = _poisoned(about, frozenset(), names_below=1)  # kind and model names
    meta["suite"] = {**suite, "version": suite["version"] + PAYLOAD, "description": suite["description"] + PAYLOAD}
    meta["schema"] = schema
    meta["metrics"] = {name: _poisoned(m, frozenset(), names_below=99) for name, m in metrics.items()}
    meta["reliability"] = {"unreliable": True, "reasons": [PAYLOAD]}
    (run_dir / "run.json").write_text(json.dumps(meta))
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines() if line.strip()]
    rows = [{**_poisoned(row, keep, names_below=99), IMG: SCRIPT} for row in rows]
    (run_dir / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
