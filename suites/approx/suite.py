"""Suite ``approx``: approximation error of every family's projection, synthetic and real.

Two experiments share one run:

* ``projection``: for each source matrix (seeded synthetic kinds x sizes x seeds, and
  the linear layers of SmolLM2-135M-Instruct and all-MiniLM-L6-v2), each family and
  each target rho, ``from_dense`` once: relative Frobenius error, wall time,
  ``rho_actual`` and the hyperparameters chosen. A shape that a family cannot take is a
  ``skipped`` row with the family's reason, so gaps in plots are explained.
* BLAST convergence (``convergence``, ``gd-lr``, ``precgd-delta0``, ``precgd-steps``):
  GD against PrecGD on a random BLAST target of known rank ``r*`` at ``r = r*`` and
  ``r > r*`` (error after every iteration); the step-size sweep that makes GD a fair
  baseline; and PrecGD's sensitivity to ``delta0`` and to the iteration budget.

One case is one projection (or one factorisation run), so ``--resume`` loses at most
one projection, and the cases of one matrix run back to back, sharing a cached load.
"""
from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from structbench.capacity import check_fits
from structbench.config import check_keys, number_list
from structbench.errors import NotApplicable, StructbenchError
from structbench.linalg import relative_error
from structbench.calibrated import weighted_error
from structbench.measure.timing import synchronize
from structbench.models import weights as model_weights
from structbench.families import get_family, resolve_families
from structbench.suite import Metric, RunContext, Schema, Suite
from structbench.synthetic import kinds, make_matrix

CONFIG_PATH = Path(__file__).with_name("default.yaml")
_TOP_KEYS = {"families", "rhos", "real_rhos", "projection", "synthetic", "real", "convergence", "objectives",
             "calibration"}
_SYNTHETIC_KEYS = {"kinds", "sizes", "seeds", "params"}
_CONVERGENCE_KEYS = {
    "size", "blocks", "true_rank", "ranks", "methods", "steps", "delta0", "lr", "seeds",
    "gd_lr_sweep", "sweep_rank", "delta0_sweep", "steps_sweep",
}
_METHODS = ("precgd", "gd")
AUTO = "auto"  # GD's step: the best step of this run's gd-lr sweep that is stable on every seed


# ---- config ------------------------------------------------------------------------
def _ints(where: str, value: Any) -> list[int]:
    return number_list(f"approx config: {where}", value, integer=True)


def _seeds(where: str, value: Any) -> list[int]:
    return number_list(f"approx config: {where}", value, integer=True, low=-1)


def _size(where: str, value: Any) -> list[int]:
    if not (isinstance(value, list) and len(value) == 2):
        raise StructbenchError(f"approx config: {where} must be [out_features, in_features], got {value!r}")
    m, n = number_list(f"approx config: {where}", value, integer=True, unique=False)
    check_fits(f"approx config: {where} [{m}, {n}]", 8 * m * n, "the matrix, drawn in float64")
    return [m, n]


def _check_synthetic(where: str, synthetic: Any) -> dict[str, Any]:
    """The section with ``kinds: all`` resolved to every kind (``structbench.synthetic.kinds``)."""
    if not isinstance(synthetic, dict):
        raise StructbenchError(f"approx config: {where} must be a mapping with keys {sorted(_SYNTHETIC_KEYS)}")
    check_keys(f"approx config: {where}", synthetic, _SYNTHETIC_KEYS)
    known = kinds()
    if synthetic.get("kinds") == "all":
        synthetic = {**synthetic, "kinds": list(known)}
    for kind in synthetic.get("kinds") or []:
        if kind not in known:
            raise StructbenchError(f"approx config: unknown synthetic kind {kind!r} in {where}.kinds; known: {', '.join(known)}")
    for i, size in enumerate(synthetic.get("sizes") or []):
        _size(f"{where}.sizes[{i}]", size)
    _seeds(f"{where}.seeds", synthetic.get("seeds"))
    for kind, params in (synthetic.get("params") or {}).items():
        if kind not in known or not isinstance(params, dict):
            raise StructbenchError(f"approx config: {where}.params.{kind} must map a known kind to its parameters")
        allowed = set(known[kind].defaults) | ({"hparams"} if known[kind].family else set())
        check_keys(f"approx config: {where}.params.{kind}", params, allowed)
    return synthetic


def _check_real(where: str, real: Any) -> None:
    if not isinstance(real, dict):
        raise StructbenchError(f"approx config: {where} must map model name -> 'all' or a list of layer indices")
    for model, layers in real.items():
        if model not in model_weights.MODELS:
            raise StructbenchError(f"approx config: unknown model {model!r} in {where}; known: {', '.join(model_weights.MODELS)}")
        if layers == "all":
            continue
        count = model_weights.MODELS[model].layers
        for layer in _seeds(f"{where}.{model}", layers):
            if layer >= count:
                raise StructbenchError(f"approx config: {model} has {count} layers (0..{count - 1}), got index {layer}")


def _check_convergence(where: str, conv: Any) -> None:
    if not isinstance(conv, dict):
        raise StructbenchError(f"approx config: {where} must be a mapping with keys {sorted(_CONVERGENCE_KEYS)}")
    check_keys(f"approx config: {where}", conv, _CONVERGENCE_KEYS)
    _size(f"{where}.size", conv.get("size"))
    for key in ("blocks", "true_rank", "steps", "sweep_rank"):
        _ints(f"{where}.{key}", [conv.get(key)])
    _ints(f"{where}.ranks", conv.get("ranks"))
    _seeds(f"{where}.seeds", conv.get("seeds"))
    _ints(f"{where}.steps_sweep", conv.get("steps_sweep"))
    methods = conv.get("methods")
    if not isinstance(methods, list) or not methods or not set(methods) <= set(_METHODS):
        raise StructbenchError(f"approx config: {where}.methods must be a list from {list(_METHODS)}, got {methods!r}")
    lr = conv.get("lr")
    if not isinstance(lr, dict) or set(lr) != set(_METHODS):
        raise StructbenchError(f"approx config: {where}.lr must give a step size for each of {list(_METHODS)}, got {lr!r}")
    number_list(f"approx config: {where}.lr", [v for k, v in lr.items() if not (k == "gd" and v == AUTO)])
    number_list(f"approx config: {where}.gd_lr_sweep", conv.get("gd_lr_sweep"))
    number_list(f"approx config: {where}.delta0", [conv.get("delta0")])
    number_list(f"approx config: {where}.delta0_sweep", conv.get("delta0_sweep"))


def validate(config: dict[str, Any], where: str = "approx") -> dict[str, Any]:
    """Resolve ``families: all`` and check every key. Also checks that the packages carrying
    the configured real models are installed, so a missing one stops the run before any
    case, with the command that installs it."""
    check_keys(f"approx config: {where}", config, _TOP_KEYS)
    families = resolve_families(f"approx config: {where}.families", config.get("families", "all"))
    rhos = [float(r) for r in number_list(f"approx config: {where}.rhos", config.get("rhos"), high=1.0)]
    if "real_rhos" in config:  # absent: the real layers use ``rhos`` (also a quick config's)
        config = {**config, "real_rhos": [float(r) for r in number_list(
            f"approx config: {where}.real_rhos", config["real_rhos"], high=1.0)]}
    projection = config.get("projection") or {}
    if not isinstance(projection, dict):
        raise StructbenchError(f"approx config: {where}.projection must map family -> from_dense options")
    for family, options in projection.items():
        get_family(family)
        if not isinstance(options, dict):
            raise StructbenchError(f"approx config: {where}.projection.{family} must be a mapping of options")
    synthetic = config.get("synthetic")
    if synthetic:
        synthetic = _check_synthetic(f"{where}.synthetic", synthetic)
    _check_real(f"{where}.real", config.get("real") or {})
    if config.get("convergence"):
        _check_convergence(f"{where}.convergence", config["convergence"])
    _check_calibration(where, config)
    for model in config.get("real") or {}:
        model_weights.require(model)
    return {**config, "families": families, "rhos": rhos, "synthetic": synthetic,
            "objectives": config.get("objectives", ["frobenius"])}


def _check_calibration(where: str, config: dict[str, Any]) -> None:
    from structbench.models.calibration import check_objectives, check_settings

    objectives = check_objectives(f"approx config: {where}.objectives", config.get("objectives", ["frobenius"]))
    if config.get("calibration") is not None or objectives != ["frobenius"]:
        check_settings(f"approx config: {where}.calibration", config.get("calibration"))


# ---- cases -------------------------------------------------------------------------
def expand(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Cases grouped by source matrix, so consecutive cases reuse one loaded matrix."""
    families = cfg["families"]
    options = cfg.get("projection") or {}
    cases: list[dict[str, Any]] = []

    def projections(source: dict[str, Any], rhos: list[float], objectives: list[str]) -> None:
        for family in families:
            # The options are part of the case: a run with other options measures other things.
            opts = json.dumps(options.get(family, {}), sort_keys=True)
            for rho in rhos:
                for objective in objectives:
                    cases.append({"experiment": "projection", **source, "family": family, "rho": rho,
                                  "objective": objective, "options": opts})

    synthetic = cfg.get("synthetic") or {}
    for kind in synthetic.get("kinds") or []:
        for m, n in synthetic.get("sizes") or []:
            for seed in synthetic["seeds"]:
                projections({"source": "synthetic", "matrix": kind, "shape": f"{m}x{n}", "out_features": m,
                             "in_features": n, "seed": seed}, cfg["rhos"], ["frobenius"])
    for model, layers in (cfg.get("real") or {}).items():
        indices = range(model_weights.MODELS[model].layers) if layers == "all" else layers
        objectives = cfg["objectives"] if model in model_weights.CAUSAL_LMS else ["frobenius"]
        for layer in indices:
            for layer_type in model_weights.layer_types(model):
                projections({"source": model, "matrix": layer_type, "layer": layer}, cfg.get("real_rhos", cfg["rhos"]),
                            objectives)
    return cases + _convergence_cases(cfg.get("convergence") or {})


def _convergence_cases(conv: dict[str, Any]) -> list[dict[str, Any]]:
    if not conv:
        return []
    m, n = conv["size"]
    target = {"source": "synthetic", "matrix": "blast", "out_features": m, "in_features": n,
              "family": "blast", "blocks": conv["blocks"], "true_rank": conv["true_rank"], "delta0": conv["delta0"]}
    cases = []
    for rank in conv["ranks"]:  # GD's step-size sweep: every seed, as stability depends on it
        for lr in conv["gd_lr_sweep"]:
            for seed in conv["seeds"]:
                cases.append({"experiment": "gd-lr", **target, "seed": seed, "rank": rank, "method": "gd", "lr": lr,
                              "steps": conv["steps"]})
    for seed in conv["seeds"]:
        for rank in conv["ranks"]:
            for method in conv["methods"]:
                cases.append({"experiment": "convergence", **target, "seed": seed, "rank": rank, "method": method,
                              "lr": conv["lr"][method], "steps": conv["steps"]})
        sweep = {**target, "seed": seed, "rank": conv["sweep_rank"], "method": "precgd", "lr": conv["lr"]["precgd"]}
        for delta0 in conv["delta0_sweep"]:
            cases.append({"experiment": "precgd-delta0", **sweep, "delta0": delta0, "steps": conv["steps"]})
        for steps in conv["steps_sweep"]:
            cases.append({"experiment": "precgd-steps", **sweep, "steps": steps})
    return cases


# ---- measuring ---------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _synthetic(kind: str, m: int, n: int, seed: int, params_json: str, dtype: torch.dtype) -> torch.Tensor:
    return make_matrix(kind, m, n, seed, dtype=dtype, **json.loads(params_json))


@functools.lru_cache(maxsize=2)
def _real_layer(model: str, layer: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {t: w.to(dtype) for _, t, w in model_weights.linear_weights(model, [layer])}


def _dtype(ctx: RunContext) -> torch.dtype:
    """The precision projections compute in: float64 if asked, else float32. SVDs and
    solves have no half-precision kernels; ``--dtype bfloat16``/``float16`` instead sets
    the precision the fitted factors are stored in (see ``_error``)."""
    return torch.float64 if str(ctx.dtype).removeprefix("torch.") == "float64" else torch.float32


def _skipped(case: dict[str, Any], reason: str, **extra: Any) -> list[dict[str, Any]]:
    return [{**case, **extra, "status": "skipped", "reason": reason, "rel_error": None, "seconds": None,
             "rho_actual": None, "macs_ratio": None, "hparams": None}]


def _source_matrix(case: dict[str, Any], ctx: RunContext) -> torch.Tensor:
    dtype = _dtype(ctx)
    if case["source"] == "synthetic":
        params = ((ctx.config.get("synthetic") or {}).get("params") or {}).get(case["matrix"], {})
        w = _synthetic(case["matrix"], case["out_features"], case["in_features"], case["seed"],
                       json.dumps(params, sort_keys=True), dtype)
    else:
        if case["source"] in model_weights.CAUSAL_LMS:
            model_weights.ensure_cache(case["source"], log=ctx.log)  # one-time GGUF conversion, logged
        w = _real_layer(case["source"], case["layer"], dtype)[case["matrix"]]
    return w.to(ctx.device)


def _seconds(ctx: RunContext, fn: Any) -> tuple[Any, float]:
    """``fn()`` and its wall time, synchronising the device so queued kernels count."""
    synchronize(ctx.device)
    start = time.perf_counter()
    out = fn()
    synchronize(ctx.device)
    return out, time.perf_counter() - start


def _error(target: torch.Tensor, module: torch.nn.Module, ctx: RunContext, gram: torch.Tensor | None = None) -> float:
    """Error of the matrix the module applies in use (eval mode) with its factors stored in
    the run's dtype, multiplied out in float64 so only the factors' rounding counts: relative
    Frobenius, or with ``gram`` the activation-weighted ``||(W - What) X|| / ||W X||``."""
    stored = getattr(torch, str(ctx.dtype).removeprefix("torch."))
    with torch.no_grad():
        approx = module.eval().to(stored).double().to_dense()
        return relative_error(target.double(), approx) if gram is None else weighted_error(target, approx, gram)


@functools.lru_cache(maxsize=1)
def _calibration_grams(model: str, layers: str | tuple[int, ...], tokens: int, seq_len: int, batch_size: int,
                       cache_dir: Path) -> dict[str, torch.Tensor]:
    """The dense model's Grams of every projection of ``layers`` on calibration draw 0 (seed 0),
    stored once under the cache (the llama-compress suite reads the same file when it
    compresses the same layers with the same draw)."""
    from structbench.models.calibration import Calibration, calibration_draws, collect_grams, grams_key, stored_grams
    from structbench.models.compress import decoder_filter
    from structbench.models.evaluation import bos_prefix
    from structbench.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(model)
    draw = calibration_draws(tokenizer, tokens)[0]

    def collect() -> dict[str, torch.Tensor]:
        net, _ = load_model(model, torch.float32)
        text = Calibration(draw.token_ids, seq_len, batch_size, prefix=bos_prefix(tokenizer))
        return collect_grams(net, text, decoder_filter(None if layers == "all" else layers))

    return stored_grams(cache_dir / "calibration", grams_key(model, draw.sha256, seq_len, "dense", layers), collect)[0]


def _gram(case: dict[str, Any], ctx: RunContext) -> torch.Tensor | None:
    """The calibration Gram of a real layer's inputs, for models that have them."""
    if case["source"] not in model_weights.CAUSAL_LMS:
        return None
    calib, layers = ctx.config["calibration"], ctx.config["real"][case["source"]]
    grams = _calibration_grams(case["source"], layers if layers == "all" else tuple(sorted(set(layers))),
                               calib["tokens"], calib["seq_len"], calib["batch_size"], ctx.cache_dir)
    module = {short: full for full, short in model_weights.MODELS[case["source"]].types.items()}[case["matrix"]]
    return grams[f"model.layers.{case['layer']}.{module}"].to(ctx.device)


def _run_projection(case: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    family = get_family(case["family"])
    try:  # a real model that cannot load raises on: a broken set-up is an error row, not a gap in a plot
        w = _source_matrix(case, ctx)
    except NotApplicable as exc:  # a synthetic kind with no matrix of this shape
        return _skipped(case, str(exc))
    m, n = w.shape
    shape = {"out_features": m, "in_features": n}
    gram = _gram(case, ctx)
    options = json.loads(case["options"])
    if case["objective"] == "calibrated":
        calib = ctx.config["calibration"]
        options.update(gram=gram, damp=calib["damp"], refine_steps=calib["refine_steps"])
    try:
        fit = family.hparams_for(m, n, case["rho"])
    except NotApplicable as exc:
        return _skipped(case, str(exc), **shape)
    module, seconds = _seconds(ctx, lambda: family.from_dense(w, **fit.hparams, **options))
    return [{**case, **shape, "status": "ok", "reason": None, "rel_error": _error(w, module, ctx),
             "weighted_error": None if gram is None else _error(w, module, ctx, gram), "seconds": seconds,
             "rho_actual": module.rho_actual, "macs_ratio": module.macs_ratio, "hparams": json.dumps(module.hparams, sort_keys=True),
             "params": module.num_params() - (m if module.bias is not None else 0)}]


def _run_blast_fit(case: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    """One BLAST factorisation of a random BLAST target, recording the error per iteration."""
    target = make_matrix("blast", case["out_features"], case["in_features"], case["seed"], dtype=_dtype(ctx),
                         hparams={"blocks": case["blocks"], "rank": case["true_rank"]}).to(ctx.device)
    iterations: list[int] = []
    errors: list[float] = []

    def progress(iteration: int, rel_error: float) -> None:
        iterations.append(int(iteration))
        errors.append(float(rel_error))

    lr = _swept_gd_lr(case, ctx) if case["lr"] == AUTO else case["lr"]
    module, seconds = _seconds(ctx, lambda: get_family("blast").from_dense(
        target, blocks=case["blocks"], rank=case["rank"], method=case["method"], steps=case["steps"],
        lr=lr, delta0=case["delta0"], seed=case["seed"], progress=progress,
    ))
    error = _error(target, module, ctx)
    row = {**case, "lr_used": lr, "status": "ok", "reason": None, "rel_error": error, "seconds": seconds,
           "rho_actual": module.rho_actual, "macs_ratio": module.macs_ratio, "hparams": json.dumps(module.hparams, sort_keys=True),
           "diverged": not (math.isfinite(error) and all(math.isfinite(e) for e in errors))}
    if case["experiment"] == "convergence":
        # Only the convergence curves are plotted; the sweeps keep their rows small.
        row.update({"iterations": iterations, "errors": errors})
    return [row]


def _swept_gd_lr(case: dict[str, Any], ctx: RunContext) -> float:
    """The step of this run's ``gd-lr`` sweep (same target, rank and steps) whose worst final
    error over the seeds is lowest, among the steps that diverge on no seed (ties go to the
    larger step): GD is compared at its best stable step, not at a guess. One seed is not
    enough: near the edge of stability a step that converges on one target blows up on another.

    ``expand`` puts the sweep first, so its rows are among the run's finished rows
    (``ctx.rows``, also after ``--resume``).
    """
    same = ("out_features", "in_features", "blocks", "true_rank", "rank", "steps")
    swept = [row for row in ctx.rows
             if row.get("experiment") == "gd-lr" and row.get("status") == "ok" and all(row.get(k) == case[k] for k in same)]
    seeds = {row["seed"] for row in swept}
    worst: dict[float, float] = {}
    for lr in {row["lr"] for row in swept}:
        runs = [row for row in swept if row["lr"] == lr]
        if {row["seed"] for row in runs} == seeds and not any(row["diverged"] for row in runs):
            worst[lr] = max(row["rel_error"] for row in runs)
    if not swept:  # the sweep's cases failed: nothing to choose from is a fault, not a finding
        raise StructbenchError(f"convergence lr 'auto' for gd at rank {case['rank']}: the gd_lr_sweep has no "
                               "finished row for this target (see its error rows)")
    if not worst:
        raise NotApplicable(f"convergence lr 'auto' for gd at rank {case['rank']}: no step of this run's "
                            "gd_lr_sweep stayed finite on every seed; widen convergence.gd_lr_sweep or give a number")
    return min(worst, key=lambda lr: (worst[lr], -lr))


def run_case(case: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    if case["experiment"] == "projection":
        return _run_projection(case, ctx)
    return _run_blast_fit(case, ctx)


def about(config: dict[str, Any]) -> dict[str, Any]:
    """What the report says of this run's sources, stored with it so that the report reads
    only the run: each real model's provenance note and each synthetic kind's structure."""
    return {
        "models": {m: model_weights.MODELS[m].note for m in config.get("real") or {} if m in model_weights.MODELS},
        "kinds": {name: {"family": kind.family, "description": kind.description} for name, kind in kinds().items()},
    }


def inputs(config: dict[str, Any]) -> dict[str, Path]:
    """The real models' shipped weights, and the calibration text when an objective uses it."""
    from structbench.models.wikitext import data_file

    found = {name: path for model in config.get("real") or {} for name, path in model_weights.source_files(model).items()}
    if "calibrated" in config.get("objectives", []):
        found["wikipedia"] = data_file()
    return found


SUITE = Suite(
    name="approx",
    version="3",
    description="Relative Frobenius and activation-weighted error and time of each family's projection from "
    "dense (Frobenius or calibrated objective), on synthetic and real (SmolLM2-135M, MiniLM) weights; "
    "BLAST GD vs PrecGD convergence",
    config_path=CONFIG_PATH,
    validate=validate,
    expand=expand,
    run_case=run_case,
    about=about,
    inputs=inputs,
    schema=Schema(case_keys=("experiment", "source", "matrix", "layer", "family", "rho", "objective", "method"),
                  headline=("rel_error", "weighted_error", "seconds"), hidden=("iterations", "errors"),
                  shard_keys=("source", "matrix", "layer"),  # a GD sweep stays with the cases reading it
                  cost_keys=("experiment", "source", "family", "objective")),
    metrics={
        "rel_error": Metric("", higher_is_better=False, description="||W - What||_F / ||W||_F"),
        "weighted_error": Metric("", higher_is_better=False, description="||(W - What) X||_F / ||W X||_F on the "
                                 "layer's calibration inputs (real causal-LM layers)"),
        "seconds": Metric("s", higher_is_better=False, description="wall time of from_dense"),
        "rho_actual": Metric("", higher_is_better=None, description="kept fraction of the dense parameters"),
        "params": Metric("", higher_is_better=None, description="stored weight parameters (bias excluded)"),
    },
)
