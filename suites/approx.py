"""Suite ``approx``: approximation error of every family's projection, synthetic and real.

Two experiments share one run:

* ``projection``: for each source matrix (seeded synthetic kinds x sizes x seeds, and
  every linear layer of SmolLM2-135M-Instruct and all-MiniLM-L6-v2), each family and
  each target rho, ``from_dense`` once: relative Frobenius error, wall time,
  ``rho_actual`` and the hyperparameters chosen. A shape that a family cannot take is a
  ``skipped`` row with the family's reason, so gaps in plots are explained.
* BLAST convergence (``convergence``, ``precgd-delta0``, ``precgd-steps``): GD against
  PrecGD on a random BLAST target of known rank ``r*`` at ``r = r*`` and ``r > r*``
  (error after every iteration), and PrecGD's sensitivity to ``delta0`` and to the
  iteration budget (final error and time).

One case is one projection (or one factorisation run), so ``--resume`` loses at most
one projection and the cases of one matrix run back to back, sharing a cached load.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from structbench.errors import StructbenchError
from structbench.linalg import relative_error
from structbench.models import weights as model_weights
from structbench.registry import get_family, list_families
from structbench.suite import Metric, RunContext, Suite
from structbench.synthetic import KINDS, make_matrix

CONFIG_PATH = Path(__file__).with_name("approx.yaml")
_TOP_KEYS = {"families", "rhos", "projection", "synthetic", "real", "convergence", "quick"}
_SYNTHETIC_KEYS = {"kinds", "sizes", "seeds", "params"}
_CONVERGENCE_KEYS = {
    "size", "blocks", "true_rank", "ranks", "methods", "steps", "delta0", "seeds",
    "sweep_rank", "delta0_sweep", "steps_sweep", "options",
}
_METHODS = ("precgd", "gd")


# ---- config ------------------------------------------------------------------------
def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge for mappings; lists and scalars in ``override`` replace the base value."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _unknown(where: str, given: dict[str, Any], known: set[str]) -> None:
    extra = sorted(set(given) - known)
    if extra:
        raise StructbenchError(f"approx config: unknown key(s) {extra} in {where}; known: {sorted(known)}")


def _int_list(where: str, value: Any, minimum: int = 0) -> list[int]:
    if not isinstance(value, list) or not value or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value
    ):
        raise StructbenchError(f"approx config: {where} must be a non-empty list of integers >= {minimum}, got {value!r}")
    return value


def _size(where: str, value: Any) -> list[int]:
    if not (isinstance(value, list) and len(value) == 2):
        raise StructbenchError(f"approx config: {where} must be [out_features, in_features], got {value!r}")
    return _int_list(where, value, minimum=1)


def _check_rhos(where: str, value: Any) -> list[float]:
    if not isinstance(value, list) or not value:
        raise StructbenchError(f"approx config: {where} must be a non-empty list, got {value!r}")
    for rho in value:
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho <= 1:
            raise StructbenchError(f"approx config: {where} values must be in (0, 1], got {rho!r}")
    return [float(r) for r in value]


def _check_section(config: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate one fully merged config (the normal one, or the one ``--quick`` runs)."""
    _unknown(where, config, _TOP_KEYS)
    known_families = list_families()
    families = config.get("families", "all")
    if families == "all":
        families = [f for f in known_families if get_family(f).compressible]
    elif not isinstance(families, list) or not families:
        raise StructbenchError(f"approx config: {where}.families must be 'all' or a list of names")
    for family in families:
        get_family(family)  # unknown names raise with a did-you-mean
    rhos = _check_rhos(f"{where}.rhos", config.get("rhos"))
    projection = config.get("projection") or {}
    if not isinstance(projection, dict):
        raise StructbenchError(f"approx config: {where}.projection must map family -> options")
    for family, options in projection.items():
        get_family(family)
        if not isinstance(options, dict):
            raise StructbenchError(f"approx config: {where}.projection.{family} must be a mapping of options")

    synthetic = config.get("synthetic") or {}
    _unknown(f"{where}.synthetic", synthetic, _SYNTHETIC_KEYS)
    if synthetic:
        for kind in synthetic.get("kinds", []):
            if kind not in KINDS:
                raise StructbenchError(f"approx config: unknown synthetic kind {kind!r}; known: {', '.join(KINDS)}")
        for i, size in enumerate(synthetic.get("sizes", [])):
            _size(f"{where}.synthetic.sizes[{i}]", size)
        _int_list(f"{where}.synthetic.seeds", synthetic.get("seeds"))
        for kind, params in (synthetic.get("params") or {}).items():
            if kind not in KINDS or not isinstance(params, dict):
                raise StructbenchError(f"approx config: {where}.synthetic.params.{kind} must be a known kind -> mapping")
            _unknown(f"{where}.synthetic.params.{kind}", params, set(KINDS[kind].defaults) | {"hparams"})

    real = config.get("real") or {}
    if not isinstance(real, dict):
        raise StructbenchError(f"approx config: {where}.real must map model name -> layers")
    for model, layers in real.items():
        if model not in model_weights.MODELS:
            raise StructbenchError(
                f"approx config: unknown model {model!r}; known: {', '.join(model_weights.MODELS)}"
            )
        if layers != "all":
            for layer in _int_list(f"{where}.real.{model}", layers):
                if layer >= model_weights.MODELS[model].layers:
                    raise StructbenchError(
                        f"approx config: {model} has {model_weights.MODELS[model].layers} layers, got index {layer}"
                    )

    conv = config.get("convergence") or {}
    _unknown(f"{where}.convergence", conv, _CONVERGENCE_KEYS)
    if conv:
        _size(f"{where}.convergence.size", conv.get("size"))
        for key in ("blocks", "true_rank", "steps", "sweep_rank"):
            _int_list(f"{where}.convergence.{key}", [conv.get(key)], minimum=1)
        _int_list(f"{where}.convergence.ranks", conv.get("ranks"), minimum=1)
        _int_list(f"{where}.convergence.seeds", conv.get("seeds"))
        _int_list(f"{where}.convergence.steps_sweep", conv.get("steps_sweep"), minimum=1)
        for method in conv.get("methods", []):
            if method not in _METHODS:
                raise StructbenchError(f"approx config: convergence method {method!r}; known: {', '.join(_METHODS)}")
        for value in [conv.get("delta0"), *conv.get("delta0_sweep", [])]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise StructbenchError(f"approx config: {where}.convergence delta0 values must be >= 0, got {value!r}")
    return {**config, "families": families, "rhos": rhos}


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Resolve ``families: all`` and check every key, for the normal and the ``--quick`` config.

    Also checks that the packages carrying the configured real models are installed,
    so a missing one stops the run before hours of synthetic cases, with the pip
    command to fix it.
    """
    if not isinstance(config, dict):
        raise StructbenchError("approx config must be a mapping")
    quick = config.get("quick") or {}
    if not isinstance(quick, dict):
        raise StructbenchError("approx config: quick must be a mapping of overrides")
    resolved = _check_section({k: v for k, v in config.items() if k != "quick"}, "approx")
    # Resolve the quick config from the raw one, so ``families: all`` is resolved there too.
    quick_resolved = _check_section(_merge({k: v for k, v in config.items() if k != "quick"}, quick), "approx.quick")
    for model in set(resolved.get("real") or {}) | set(quick_resolved.get("real") or {}):
        model_weights.package_dir(model)
    if (resolved.get("real") or quick_resolved.get("real")) and importlib.util.find_spec("safetensors") is None:
        raise StructbenchError("real weights need safetensors: pip install safetensors")
    return {**resolved, "quick": {k: v for k, v in quick_resolved.items() if k in quick}}


# ---- cases -------------------------------------------------------------------------
def expand(config: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """Cases grouped by source matrix, so consecutive cases reuse one loaded matrix."""
    cfg = _merge({k: v for k, v in config.items() if k != "quick"}, config.get("quick") or {}) if quick else config
    families, rhos = cfg["families"], cfg["rhos"]
    cases: list[dict[str, Any]] = []

    def projections(source: dict[str, Any]) -> None:
        for family in families:
            for rho in rhos:
                cases.append({"experiment": "projection", **source, "family": family, "rho": rho})

    synthetic = cfg.get("synthetic") or {}
    for kind in synthetic.get("kinds", []):
        for m, n in synthetic.get("sizes", []):
            for seed in synthetic.get("seeds", []):
                projections({"source": "synthetic", "matrix": kind, "out_features": m, "in_features": n,
                             "seed": seed, "layer": None})
    for model, layers in (cfg.get("real") or {}).items():
        indices = range(model_weights.MODELS[model].layers) if layers == "all" else layers
        for layer in indices:
            for layer_type in model_weights.layer_types(model):
                projections({"source": model, "matrix": layer_type, "layer": layer})

    conv = cfg.get("convergence") or {}
    if conv:
        m, n = conv["size"]
        target = {"source": "synthetic", "matrix": "blast", "out_features": m, "in_features": n,
                  "family": "blast", "blocks": conv["blocks"], "true_rank": conv["true_rank"]}
        for seed in conv["seeds"]:
            for rank in conv["ranks"]:
                for method in conv["methods"]:
                    cases.append({"experiment": "convergence", **target, "seed": seed, "rank": rank,
                                  "method": method, "steps": conv["steps"], "delta0": conv["delta0"]})
            for delta0 in conv["delta0_sweep"]:
                cases.append({"experiment": "precgd-delta0", **target, "seed": seed, "rank": conv["sweep_rank"],
                              "method": "precgd", "steps": conv["steps"], "delta0": delta0})
            for steps in conv["steps_sweep"]:
                cases.append({"experiment": "precgd-steps", **target, "seed": seed, "rank": conv["sweep_rank"],
                              "method": "precgd", "steps": steps, "delta0": conv["delta0"]})
    return cases


# ---- measuring ---------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _synthetic(kind: str, m: int, n: int, seed: int, params_json: str, dtype: torch.dtype) -> torch.Tensor:
    return make_matrix(kind, m, n, seed, dtype=dtype, **json.loads(params_json))


@functools.lru_cache(maxsize=2)
def _real_layer(model: str, layer: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {t: w.to(dtype) for _, t, w in model_weights.linear_weights(model, [layer])}


def _dtype(ctx: RunContext) -> torch.dtype:
    dtype = getattr(torch, str(ctx.dtype).removeprefix("torch."), None)
    if dtype not in (torch.float32, torch.float64):
        raise StructbenchError(f"approx runs in float32 or float64, got dtype {ctx.dtype!r}")
    return dtype


def _skipped(case: dict[str, Any], reason: str, **extra: Any) -> list[dict[str, Any]]:
    return [{**case, **extra, "status": "skipped", "reason": reason, "rel_error": None, "seconds": None,
             "rho_actual": None, "hparams": None}]


def _source_matrix(case: dict[str, Any], ctx: RunContext) -> torch.Tensor:
    dtype = _dtype(ctx)
    if case["source"] == "synthetic":
        params = ((ctx.config.get("synthetic") or {}).get("params") or {}).get(case["matrix"], {})
        return _synthetic(case["matrix"], case["out_features"], case["in_features"], case["seed"],
                          json.dumps(params, sort_keys=True), dtype)
    if case["source"] == model_weights.SMOLLM2:
        model_weights.ensure_smollm2_cache(log=ctx.log)  # one-time GGUF conversion, logged
    return _real_layer(case["source"], case["layer"], dtype)[case["matrix"]]


def _run_projection(case: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    family = get_family(case["family"])
    options = dict((ctx.config.get("projection") or {}).get(case["family"], {}))
    try:
        w = _source_matrix(case, ctx)
    except StructbenchError as exc:
        if case["source"] != "synthetic":
            raise  # a real model that cannot load is a broken setup, not a gap in a plot
        return _skipped(case, str(exc))
    m, n = w.shape
    shape = {"out_features": m, "in_features": n, "options": json.dumps(options, sort_keys=True)}
    try:
        fit = family.hparams_for(m, n, case["rho"])
        start = time.perf_counter()
        module = family.from_dense(w, **fit.hparams, **options)
        seconds = time.perf_counter() - start
    except StructbenchError as exc:
        return _skipped(case, str(exc), **shape)
    with torch.no_grad():
        error = relative_error(w.double(), module.to_dense().double())
    return [{**case, **shape, "status": "ok", "reason": None, "rel_error": error, "seconds": seconds,
             "rho_actual": module.rho, "hparams": json.dumps(module.hparams, sort_keys=True),
             "params": module.num_params() - (m if module.bias is not None else 0)}]


def _run_blast_fit(case: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    """One BLAST factorisation of a random BLAST target, recording the error per iteration."""
    m, n = case["out_features"], case["in_features"]
    target = make_matrix("blast", m, n, case["seed"], dtype=_dtype(ctx),
                         hparams={"blocks": case["blocks"], "rank": case["true_rank"]})
    options = dict(((ctx.config.get("convergence") or {}).get("options") or {}).get(case["method"], {}))
    iterations: list[int] = []
    errors: list[float] = []

    def progress(iteration: int, rel_error: float) -> None:
        iterations.append(int(iteration))
        errors.append(float(rel_error))

    start = time.perf_counter()
    module = get_family("blast").from_dense(
        target, blocks=case["blocks"], rank=case["rank"], method=case["method"], steps=case["steps"],
        delta0=case["delta0"], seed=case["seed"], progress=progress, **options,
    )
    seconds = time.perf_counter() - start
    with torch.no_grad():
        error = relative_error(target.double(), module.to_dense().double())
    row = {**case, "status": "ok", "reason": None, "rel_error": error, "seconds": seconds,
           "rho_actual": module.rho, "hparams": json.dumps(module.hparams, sort_keys=True),
           "options": json.dumps(options, sort_keys=True), "diverged": not math.isfinite(error)}
    if case["experiment"] == "convergence":
        # Only the convergence curves are plotted; sweeps keep rows small.
        row.update({"iterations": iterations, "errors": errors})
    return [row]


def run_case(case: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    if case["experiment"] == "projection":
        return _run_projection(case, ctx)
    return _run_blast_fit(case, ctx)


def _report(run: Any) -> list[Any]:
    """Deferred import: running the suite never needs the report's plotting stack."""
    from structbench.report.approx import approx_report

    return approx_report(run)


SUITE = Suite(
    name="approx",
    version="1",
    description="Relative Frobenius error and time of each family's projection from dense, on synthetic "
    "and real (SmolLM2-135M, MiniLM) weights; BLAST GD vs PrecGD convergence",
    config_path=CONFIG_PATH,
    validate=validate,
    expand=expand,
    run_case=run_case,
    report=_report,
    metrics={
        "rel_error": Metric("", higher_is_better=False, description="||W - What||_F / ||W||_F"),
        "seconds": Metric("s", higher_is_better=False, description="wall time of from_dense"),
        "rho_actual": Metric("", higher_is_better=None, description="kept fraction of the dense parameters"),
        "params": Metric("", higher_is_better=None, description="stored weight parameters (bias excluded)"),
    },
)
