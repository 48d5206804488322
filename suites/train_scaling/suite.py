"""Suite ``train-scaling``: compute-matched scaling curves of structured layers trained from
scratch, the experiment of *Compute Better Spent* (Qiu et al., ICML 2024).

For each task (a Fashion-MNIST MLP or ViT, the byte-level GPT on Wikipedia), every family is
trained at every width of the task's ladder: structured at each parameter budget ``rho`` and,
for families with a fixed-rank structure (BTT, Kronecker), at the anchor's ranks with balanced
factors; the dense model at every width is the reference curve. Each point is trained at a
few learning rates (``lr_factors`` times the task's recipe rate), with the recipe as it is and
with structure-aware scaling (``structbench.train.scaling``), over several seeds. A row
records the held-out loss against the training compute (``train_macs``: 3 x the forward's
fvcore MACs x examples seen); the report picks each family's best learning rate per width,
draws loss against compute per family with the dense curve, and says, with intervals over the
seeds, where a family beats dense per unit of compute.

One case = one training run (``structbench.train.task.train_row``): task, family, structure
(``rho`` or ``rank``), width, learning-rate factor, scaling and seed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from structbench.config import check_keys, distinct, number_list
from structbench.errors import StructbenchError
from structbench.families import get_family, list_families, resolve_families
from structbench.suite import Metric, RunContext, Schema, Suite
from structbench.train import task as common
from structbench.train.language import GPT_TASK
from structbench.train.scaling import SCALINGS
from structbench.train.vision import MLP_TASK, VIT

CONFIG_PATH = Path(__file__).with_name("default.yaml")
TASKS: dict[str, common.Task] = {"mlp": MLP_TASK, "vit": VIT, "gpt": GPT_TASK}
TOP_KEYS = {"tasks", "families", "rhos", "ranks", "lr_factors", "scalings", "seeds", *TASKS}
LADDER_KEYS = {"widths", "layers", "model", "recipe", "data"}
WIDTH = "dim"
"""The model key a ladder sets: every task's width."""


def _ladder(task: common.Task, given: Any, where: str) -> dict[str, Any]:
    """One task's section: its widths (ascending, distinct), the layers to replace, and the
    task's ``model`` (all but the width), ``recipe`` and ``data``; every width's model is built
    on the ``meta`` device to check its shapes and size."""
    if not isinstance(given, dict):
        raise StructbenchError(f"{where} must be a mapping with keys {sorted(LADDER_KEYS)}")
    check_keys(where, given, LADDER_KEYS, LADDER_KEYS)
    widths = number_list(f"{where}.widths", given["widths"], integer=True)
    if widths != sorted(widths):
        raise StructbenchError(f"{where}.widths must ascend (the first is the base width), got {widths!r}")
    if given["layers"] not in task.layers:
        raise StructbenchError(f"{where}.layers must be one of {sorted(task.layers)}, got {given['layers']!r}")
    model = given["model"]
    if isinstance(model, dict) and WIDTH in model:
        raise StructbenchError(f"{where}.model.{WIDTH} is set by {where}.widths; remove it")
    sections = common.sections(task, {**given, "model": {**(model if isinstance(model, dict) else {}),
                                                           WIDTH: widths[0]}}, where)
    resolved = {"widths": widths, "layers": given["layers"], **sections}
    for width in widths:
        common.check_size(task, at_width(resolved, width), f"{where} at width {width}")
    task.require(resolved)
    return resolved


def at_width(ladder: dict[str, Any], width: int) -> dict[str, Any]:
    """The task config of one rung: the ladder's sections with the model at ``width``."""
    return {"layers": ladder["layers"], "model": {**ladder["model"], WIDTH: width}, "recipe": ladder["recipe"],
            "data": ladder["data"]}


def _ranks(where: str, value: Any) -> dict[str, list[int]]:
    fixed = [f for f in list_families() if get_family(f).has_fixed_rank()]
    if not isinstance(value, dict):
        raise StructbenchError(f"{where} must map families with a fixed-rank structure ({', '.join(fixed)}) to "
                               f"lists of ranks, got {value!r}")
    for family in value:
        if family not in fixed:
            raise StructbenchError(f"{where}: {family!r} has no fixed-rank structure; accepted: {', '.join(fixed)}")
    return {family: number_list(f"{where}.{family}", ranks, integer=True) for family, ranks in value.items()}


def validate(config: dict[str, Any], where: str = "train-scaling") -> dict[str, Any]:
    check_keys(where, config, TOP_KEYS, ("tasks",))
    tasks = config["tasks"]
    if not isinstance(tasks, list) or not tasks or any(t not in TASKS for t in tasks):
        raise StructbenchError(f"{where}.tasks must be a non-empty list from {sorted(TASKS)}, got {tasks!r}")
    scalings = config.get("scalings", ["standard"])
    if not isinstance(scalings, list) or not scalings or any(s not in SCALINGS for s in scalings):
        raise StructbenchError(f"{where}.scalings must be a non-empty list from {sorted(SCALINGS)}, got {scalings!r}")
    rhos = number_list(f"{where}.rhos", config.get("rhos", [0.25]), high=1.0)
    if 1.0 in rhos:
        raise StructbenchError(f"{where}.rhos must be below 1 (the dense reference runs at every width anyway)")
    resolved: dict[str, Any] = {
        "tasks": distinct(f"{where}.tasks", list(tasks)),
        "families": [f for f in resolve_families(f"{where}.families", config.get("families", "all")) if f != "dense"],
        "rhos": [float(r) for r in rhos],
        "ranks": _ranks(f"{where}.ranks", config.get("ranks", {})),
        "lr_factors": [float(f) for f in number_list(f"{where}.lr_factors", config.get("lr_factors", [1.0]))],
        "scalings": distinct(f"{where}.scalings", list(scalings)),
        "seeds": number_list(f"{where}.seeds", config.get("seeds", [0]), integer=True, low=-1),
    }
    for name in resolved["tasks"]:
        resolved[name] = _ladder(TASKS[name], config.get(name), f"{where}.{name}")
    return resolved


def structures(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every curve a task draws, as the case fields that name it: dense, each family at each
    ``rho``, and each fixed-rank family at each of its ranks."""
    return ([{"family": "dense", "rho": 1.0, "rank": None}]
            + [{"family": f, "rho": rho, "rank": None} for f in config["families"] for rho in config["rhos"]]
            + [{"family": f, "rho": None, "rank": r} for f, ranks in config["ranks"].items() for r in ranks])


def expand(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Seed by seed, so a run cut short has whole curves for its first seeds; within a seed,
    task by task and width by width (the cheap rungs first)."""
    return [{"task": task, **structure, "width": width, "lr_factor": lr, "scaling": scaling, "seed": seed}
            for seed in config["seeds"] for task in config["tasks"] for width in config[task]["widths"]
            for scaling in config["scalings"] for lr in config["lr_factors"] for structure in structures(config)]


def run_case(case: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    task, ladder = TASKS[case["task"]], ctx.config[case["task"]]
    row = common.train_row(task, at_width(ladder, case["width"]), ctx, case["family"], case["seed"],
                           rho=case["rho"] if case["rho"] is not None else 1.0, rank=case["rank"],
                           lr_factor=case["lr_factor"], scaling=SCALINGS[case["scaling"]],
                           base_cfg=at_width(ladder, ladder["widths"][0]))
    return [{**row, "eval_loss": row[task.held_out_loss]}]


def _inputs(config: dict[str, Any]) -> dict[str, Path]:
    return {f"{name} {key}": path for name in config["tasks"] if TASKS[name].inputs is not None
            for key, path in TASKS[name].inputs(config[name]).items()}


SUITE = Suite(
    name="train-scaling",
    version="1",
    description="Compute-matched scaling curves from scratch: held-out loss vs training MACs per family over a "
    "ladder of widths, with learning-rate sweeps and structure-aware scaling on and off, several seeds",
    config_path=CONFIG_PATH,
    validate=validate,
    expand=expand,
    run_case=run_case,
    schema=Schema(case_keys=("task", "family", "rho", "rank", "width", "lr_factor", "scaling", "seed"),
                  headline=("eval_loss",), hidden=("curves",), cost_keys=("task", "family", "width")),
    metrics={
        **common.shared_metrics(),
        **{key: metric for task in TASKS.values() for key, metric in task.metrics.items()},
        "eval_loss": Metric("nat", higher_is_better=False, description="held-out cross-entropy (the task's "
                            "test_loss or val_loss: per image, or per byte)"),
    },
    inputs=_inputs,
)
