"""What the training suites share: config checks, cases, and running one training run.

A ``Task`` (``structbench.train.vision``, ``structbench.train.language``) says how to build
a model, feed it and score it; everything else is here, so every suite that trains (train-vision,
train-lm, train-scaling) trains, counts and reports identically. One case is one (family, rho,
seed) training run; the dense reference is ``(dense, 1.0, seed)``. A case's seed sets its
initial weights, data order and augmentation, so the spread over ``seeds`` is the
training's own variance; the data (train-vision's image subset) follows the run's ``--seed``
and is the same for every seed. ``--resume`` loses at most the training run in progress.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from structbench.capacity import check_fits
from structbench.config import betas, check_keys, fraction, number_list, positive_int, positive_number, section
from structbench.errors import NotApplicable, StructbenchError
from structbench.families import resolve_families
from structbench.suite import Metric, RunContext, Schema, Suite
from structbench.train.loop import Batch, Recipe, train
from structbench.train.scaling import STANDARD, Scaling, dense_fan_ins, lr_multipliers, zero_outputs_
from structbench.train.structure import model_macs, structure_, structured_budget

Checker = Callable[[str, Any], Any]


RECIPE: dict[str, Checker] = {
    "batch_size": positive_int, "lr": positive_number, "weight_decay": fraction, "warmup": fraction,
    "min_lr": fraction, "grad_clip": positive_number, "betas": betas, "evals": positive_int,
}
"""Recipe keys both suites share; each suite adds its length (``epochs`` or ``steps``)."""


@dataclass(frozen=True)
class Task:
    """One suite's model, data and score; the shared machinery does the rest."""

    name: str
    model: dict[str, Checker]  # model config keys
    data: dict[str, Checker]  # data config keys
    recipe: dict[str, Checker]  # RECIPE plus the suite's own keys
    layers: dict[str, str]  # value of the ``layers`` key -> regex of the linears to replace
    build: Callable[[dict[str, Any]], nn.Module]  # resolved config -> model (dense linears)
    example: Callable[[dict[str, Any]], torch.Tensor]  # one input, for counting MACs
    prepare: Callable[[dict[str, Any], RunContext], "Prepared"]  # data and recipe of a run
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metrics: dict[str, Metric]  # what ``evaluate`` returns
    headline: tuple[str, ...]  # the score first; each gets a training curve
    held_out_loss: str  # the metric that is the held-out cross-entropy (the scaling curves' y)
    residual: str | None = None
    """Regex of the replaced layers that write into a residual stream (none: no residual)."""
    require: Callable[[dict[str, Any]], None] = lambda config: None
    """A run-level precondition (a data set on disk), checked with the config so a missing one
    stops the run before any case, with one line saying how to get it."""
    inputs: Callable[[dict[str, Any]], dict[str, Path]] | None = None  # resolved config -> data files read


@dataclass
class Prepared:
    recipe: Recipe
    batches: Callable[[torch.Generator], Iterator[Batch]]
    evaluate: Callable[[nn.Module], dict[str, float]]


TRAIN_MACS_PER_FORWARD = 3
"""Training compute per example in forwards: the forward and a backward of about twice its
MACs (the input and the weight gradients), the rule the scaling-law papers count by."""

TOP_KEYS = {"families", "rhos", "seeds", "layers", "model", "recipe", "data"}


def validate(task: Task, config: dict[str, Any], where: str) -> dict[str, Any]:
    """Check every key of one config; ``families: all`` resolves to every compressible family."""
    check_keys(where, config, TOP_KEYS)
    families = resolve_families(f"{where}.families", config.get("families", "all"))
    rhos = config.get("rhos")
    if not isinstance(rhos, list) or not rhos or not all(
        not isinstance(r, bool) and isinstance(r, (int, float)) and 0 < r < 1 for r in rhos
    ):
        raise StructbenchError(f"{where}.rhos must be a non-empty list of numbers in (0, 1), got {rhos!r}")
    if config.get("layers") not in task.layers:
        raise StructbenchError(f"{where}.layers must be one of {sorted(task.layers)}, got {config.get('layers')!r}")
    seeds = number_list(f"{where}.seeds", config.get("seeds", [0]), integer=True, low=-1)
    resolved: dict[str, Any] = {"families": families, "rhos": [float(r) for r in rhos], "seeds": seeds,
                                "layers": config["layers"], **sections(task, config, where)}
    check_size(task, resolved, where)
    task.require(resolved)
    return resolved


def sections(task: Task, config: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """The task's ``model``, ``recipe`` and ``data`` sections of ``config``, every key checked."""
    resolved = {}
    for name, spec in (("model", task.model), ("recipe", task.recipe), ("data", task.data)):
        given = section(f"{where}.{name}", config.get(name), spec)
        resolved[name] = {key: check(f"{where}.{name}.{key}", given[key]) for key, check in spec.items()}
    return resolved


def check_size(task: Task, cfg: dict[str, Any], where: str) -> None:
    """Shape errors (dim vs heads, patch vs image) and models too large for this machine,
    found before any training: the model is built and run on the ``meta`` device, which
    checks shapes and counts sizes without allocating."""
    with torch.device("meta"):
        try:
            model = task.build(cfg)
        except ValueError as err:
            raise StructbenchError(f"{where}.model: {err}") from None
        example = task.example(cfg)
        output = model(example)
    params = sum(p.numel() for p in model.parameters())
    batch = cfg["recipe"]["batch_size"]
    check_fits(f"{where}: the dense model ({params:,} parameters) at batch_size {batch}",
               16 * params + 4 * batch * (example.numel() + output.numel()),
               "its weights, gradients and AdamW's two moments at 4 bytes a value, and one batch's inputs "
               "and outputs")


def expand(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Seed by seed (a run cut short still has whole tables for its first seeds): the dense
    reference first, then every family at every rho."""
    return [case for seed in config["seeds"] for case in
            [{"family": "dense", "rho": 1.0, "seed": seed}] +
            [{"family": f, "rho": rho, "seed": seed} for f in config["families"] if f != "dense" for rho in config["rhos"]]]


def _layer_hparams(hparams: dict[str, dict[str, Any]]) -> str:
    """Hyperparameters per layer kind (``blocks.0.attn.qkv`` -> ``qkv``), as JSON, with each
    kind's distinct settings (all blocks share a shape, so normally one per kind)."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for name, hp in hparams.items():
        seen = kinds.setdefault(name.rsplit(".", 1)[-1], [])
        if hp not in seen:
            seen.append(hp)
    return json.dumps({k: v[0] if len(v) == 1 else v for k, v in kinds.items()}, sort_keys=True)


def run_case(task: Task, case: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    """Build, structure, train and score one (family, rho, seed) model; one result row."""
    return [train_row(task, ctx.config, ctx, case["family"], case["seed"], rho=case["rho"])]


def train_row(task: Task, cfg: dict[str, Any], ctx: RunContext, family: str, seed: int, *, rho: float = 1.0,
              rank: int | None = None, lr_factor: float = 1.0, scaling: Scaling = STANDARD,
              base_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one model of ``cfg`` (the task's resolved sections and ``layers``) with its
    replaced linears of ``family`` at ``rho`` (or, with ``rank``, the family's balanced
    structure of that rank), the recipe's learning rate times ``lr_factor`` and ``scaling``;
    its result row. ``base_cfg`` is the config of the width the learning rate was tuned at,
    whose dense fan-ins the per-factor rates are relative to (default: ``cfg``'s own)."""
    if ctx.dtype != "float32":
        raise NotApplicable(f"{task.name} trains in float32 only, not --dtype {ctx.dtype}")
    include = task.layers[cfg["layers"]]
    torch.manual_seed(seed)
    dense_model = task.build(cfg)
    dense_macs = model_macs(dense_model, task.example(cfg))
    torch.manual_seed(seed)  # same initial embeddings, norms and head for every family
    model = task.build(cfg)
    base_fan_ins = None
    if scaling.per_factor_lr:
        with torch.device("meta"):
            base_fan_ins = dense_fan_ins(task.build(base_cfg or cfg), include)
    structure = structure_(model, family, rho, include, rank=rank)
    if scaling.zero_residual and task.residual is not None:
        zero_outputs_(model, task.residual)
    prepared = task.prepare(cfg, ctx)
    recipe = replace(prepared.recipe, lr=prepared.recipe.lr * lr_factor)
    gen = torch.Generator().manual_seed(seed)  # data order and augmentation: seed only
    ctx.log(f"{task.name}: {family} {'rank=' + str(rank) if rank else f'rho={rho}'} seed {seed}: {structure.layers} "
            f"layers at rho_actual {structure.budget.rho_actual:.3f}, macs_ratio {structure.budget.macs_ratio:.3f}, "
            f"{recipe.steps} steps at lr {recipe.lr:.3g} ({scaling.name})")
    history = train(model.to(ctx.device), recipe, prepared.batches(gen), task.loss, prepared.evaluate, log=ctx.log,
                    lr_scale=None if base_fan_ins is None else lr_multipliers(model, base_fan_ins))
    model = model.cpu()
    macs = model_macs(model, task.example(cfg))
    trained = structured_budget(model)  # after training: Gaudi's widths have moved and been snapped
    curves = {"step": history.step, "train_loss": history.train_loss, "train_seconds": history.train_seconds,
              **history.metrics}
    return {
        **{key: values[-1] for key, values in history.metrics.items()},
        "macs": macs,
        "dense_macs": dense_macs,
        "model_macs_ratio": macs / dense_macs,
        "train_macs": TRAIN_MACS_PER_FORWARD * macs * recipe.steps * recipe.batch_size,
        "rho_actual": trained.rho_actual,
        "macs_ratio": trained.macs_ratio,
        "params": sum(p.numel() for p in model.parameters()),
        "dense_params": sum(p.numel() for p in dense_model.parameters()),
        "train_seconds": history.train_seconds[-1],
        "steps": recipe.steps,
        "layers": structure.layers,
        "hparams": _layer_hparams(structure.hparams),
        "curves": {k: [round(float(v), 6) for v in vals] for k, vals in curves.items()},
    }


def recipe_from(rec: dict[str, Any], steps: int) -> Recipe:
    """The loop's recipe from a resolved ``recipe`` section and the run's length in steps."""
    return Recipe(steps=steps, batch_size=rec["batch_size"], lr=rec["lr"], weight_decay=rec["weight_decay"],
                  warmup=rec["warmup"], min_lr=rec["min_lr"], grad_clip=rec["grad_clip"], betas=tuple(rec["betas"]),
                  evals=rec["evals"])


def make_suite(name: str, task: Task, *, description: str, config_path: Any) -> Suite:
    """The ``Suite`` that trains ``task`` per (family, rho, seed): the task's ``headline[0]`` is
    the score the report plots against the whole model's MACs ratio, and every headline metric
    gets a training curve."""
    return Suite(
        name=name,
        version="1",
        description=description,
        config_path=config_path,
        validate=lambda config, where=name: validate(task, config, where),
        expand=expand,
        run_case=lambda case, ctx: run_case(task, case, ctx),
        schema=Schema(case_keys=("family", "rho", "seed"), headline=task.headline, hidden=("curves",),
                      cost_keys=("family",)),
        metrics={**shared_metrics(), **task.metrics},
        inputs=task.inputs,
    )


def shared_metrics() -> dict[str, Metric]:
    """Metric metadata both suites declare."""
    return {
        "model_macs_ratio": Metric("", higher_is_better=False, description="fvcore MACs of one forward of the whole "
                                   "model (attention included) over the dense model's"),
        "macs": Metric("MAC", higher_is_better=False, description="fvcore multiply-adds of one forward"),
        "rho_actual": Metric("", higher_is_better=None, description="kept fraction of the replaced linears' parameters, "
                             "after training"),
        "macs_ratio": Metric("", higher_is_better=False, description="the replaced linears' MACs per token over the "
                             "dense linears', after training (above 1 for a Kronecker sum)"),
        "params": Metric("", higher_is_better=None, description="trainable parameters of the whole model (Gaudi stores dense-sized factors)"),
        "train_seconds": Metric("s", higher_is_better=False, description="training wall time, evaluation excluded"),
        "train_macs": Metric("MAC", higher_is_better=False, description="training compute: 3 x the forward's fvcore "
                             "MACs per example x examples seen (a backward costs about two forwards)"),
    }
