"""Byte-level language modelling on the Wikipedia text, trained from scratch: the ``Task`` of
a small GPT (suite ``train-lm`` and the ``train-scaling`` ladders).

Training windows are drawn at random from the ``train`` split; validation is a fixed prefix
of the ``valid`` split cut into consecutive windows, the same bytes for every model (the
split is by article title, so no article is in both).
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from structbench.config import optional_positive_int, positive_int
from structbench.models.wikitext import data_file, require_text
from structbench.suite import Metric, RunContext
from structbench.train import task as common
from structbench.train.blocks import BLOCK_LINEARS, RESIDUAL_LINEARS
from structbench.train.data import fixed_windows, random_windows, wiki_bytes
from structbench.train.gpt import GPT, GPTConfig
from structbench.train.loop import Batch

EVAL_BATCH = 64


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _prepare(cfg: dict[str, Any], ctx: RunContext) -> common.Prepared:
    rec, context = cfg["recipe"], cfg["model"]["context"]
    train_stream = wiki_bytes("train")
    val_x, val_y = fixed_windows(wiki_bytes("valid"), context, cfg["data"]["eval_bytes"])
    recipe = common.recipe_from(rec, rec["steps"])

    def batches(gen: torch.Generator) -> Iterator[Batch]:
        while True:
            yield random_windows(train_stream, rec["batch_size"], context, gen)

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        total = 0.0
        for start in range(0, len(val_x), EVAL_BATCH):
            logits = model(val_x[start : start + EVAL_BATCH].to(device))
            total += float(F.cross_entropy(logits.flatten(0, 1), val_y[start : start + EVAL_BATCH].to(device).flatten(),
                                           reduction="sum"))
        loss = total / val_y.numel()
        return {"val_ppl": math.exp(loss), "val_loss": loss, "val_bpb": loss / math.log(2)}

    return common.Prepared(recipe, batches, evaluate)


GPT_TASK = common.Task(
    name="gpt",
    model={"context": positive_int, "dim": positive_int, "depth": positive_int,
           "heads": positive_int, "mlp_ratio": positive_int},
    data={"eval_bytes": optional_positive_int},
    recipe={**common.RECIPE, "steps": positive_int},
    layers={"blocks": BLOCK_LINEARS},
    residual=RESIDUAL_LINEARS,
    build=lambda cfg: GPT(GPTConfig(**cfg["model"])),
    example=lambda cfg: torch.zeros(1, cfg["model"]["context"], dtype=torch.long),
    prepare=_prepare,
    loss=_loss,
    metrics={
        "val_ppl": Metric("", higher_is_better=False, description="validation perplexity per byte"),
        "val_loss": Metric("nat", higher_is_better=False, description="validation cross-entropy per byte"),
        "val_bpb": Metric("bit", higher_is_better=False, description="validation bits per byte"),
    },
    headline=("val_ppl", "val_loss"),
    held_out_loss="val_loss",
    inputs=lambda cfg: {"wikipedia": data_file()},
    require=lambda cfg: require_text(),
)
"""A nanoGPT-style byte-level GPT on Wikipedia (``structbench.train.gpt``)."""
