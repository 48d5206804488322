"""Fashion-MNIST image classification, trained from scratch: the ``Task`` of a small ViT
(suite ``train-vision``) and of a plain MLP (the ``train-scaling`` ladders), one data
pipeline for both.

Training images are a random subset drawn with the run's ``--seed`` (the same for every
training seed), normalised with their own mean and standard deviation, shifted and mirrored
on the fly; the test images are scored whole, in batches.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from structbench.config import boolean, non_negative_int, optional_positive_int, positive_int
from structbench.errors import StructbenchError
from structbench.suite import Metric, RunContext
from structbench.train import task as common
from structbench.train.blocks import BLOCK_LINEARS, RESIDUAL_LINEARS
from structbench.train.data import fashion_mnist, fashion_mnist_files, normalise, require_fashion_mnist, shift_and_flip
from structbench.train.loop import Batch
from structbench.train.mlp import HIDDEN_LINEARS, MLP, MLPConfig
from structbench.train.vit import ViT, ViTConfig

EVAL_BATCH = 1000

METRICS = {
    "test_acc": Metric("", higher_is_better=True, description="top-1 accuracy on the test images"),
    "test_loss": Metric("nat", higher_is_better=False, description="cross-entropy on the test images"),
}


def _path(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise StructbenchError(f"{where} must be a folder path, got {value!r}")
    return value


def _subset(images: torch.Tensor, labels: torch.Tensor, count: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if count is None or count >= len(labels):
        return images, labels
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:count]
    return images[keep], labels[keep]


def _prepare(cfg: dict[str, Any], ctx: RunContext) -> common.Prepared:
    data, rec = cfg["data"], cfg["recipe"]
    train_x, train_y = _subset(*fashion_mnist("train", data["root"]), data["train_images"], ctx.seed)
    test_x, test_y = _subset(*fashion_mnist("test", data["root"]), data["test_images"], ctx.seed)
    pixels = train_x.float() / 255
    mean, std = pixels.mean().item(), pixels.std().item()
    per_epoch = len(train_y) // rec["batch_size"]
    if per_epoch < 1:
        raise StructbenchError(f"{len(train_y)} training images are fewer than one batch of {rec['batch_size']}")
    recipe = common.recipe_from(rec, rec["epochs"] * per_epoch)
    test_inputs = normalise(test_x, mean, std)

    def batches(gen: torch.Generator) -> Iterator[Batch]:
        """Epochs of a fresh permutation each (last partial batch dropped), augmented."""
        while True:
            order = torch.randperm(len(train_y), generator=gen)
            for k in range(per_epoch):
                idx = order[k * rec["batch_size"] : (k + 1) * rec["batch_size"]]
                x = train_x[idx]
                if rec["shift"] or rec["flip"]:
                    x = shift_and_flip(x, rec["shift"], gen, flip=rec["flip"])
                yield normalise(x, mean, std), train_y[idx]

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        correct, loss = 0, 0.0
        for start in range(0, len(test_y), EVAL_BATCH):
            x = test_inputs[start : start + EVAL_BATCH].to(device)
            y = test_y[start : start + EVAL_BATCH].to(device)
            logits = model(x)
            correct += int((logits.argmax(-1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
        return {"test_acc": correct / len(test_y), "test_loss": loss / len(test_y)}

    return common.Prepared(recipe, batches, evaluate)


def _image(cfg: dict[str, Any]) -> torch.Tensor:
    return torch.zeros(1, ViTConfig.image, ViTConfig.image)


DATA = {"root": _path, "train_images": optional_positive_int, "test_images": optional_positive_int}
RECIPE = {**common.RECIPE, "epochs": positive_int, "shift": non_negative_int, "flip": boolean}


def _task(name: str, **parts: Any) -> common.Task:
    return common.Task(name=name, data=DATA, recipe=RECIPE, example=_image, prepare=_prepare, loss=F.cross_entropy,
                       metrics=METRICS, headline=("test_acc", "test_loss"), held_out_loss="test_loss",
                       require=lambda cfg: require_fashion_mnist(cfg["data"]["root"]),
                       inputs=lambda cfg: fashion_mnist_files(cfg["data"]["root"]), **parts)


VIT = _task(
    "vit",
    model={"patch": positive_int, "dim": positive_int, "depth": positive_int, "heads": positive_int,
           "mlp_ratio": positive_int},
    layers={"blocks": BLOCK_LINEARS, "blocks+patch": rf"{BLOCK_LINEARS}|^patch_embed$"},
    residual=RESIDUAL_LINEARS,
    build=lambda cfg: ViT(ViTConfig(**cfg["model"])),
)
"""A small ViT on Fashion-MNIST (``structbench.train.vit``)."""

MLP_TASK = _task(
    "mlp",
    model={"dim": positive_int, "depth": positive_int},
    layers={"hidden": HIDDEN_LINEARS},
    build=lambda cfg: MLP(MLPConfig(**cfg["model"])),
)
"""A plain MLP on Fashion-MNIST (``structbench.train.mlp``): no residual stream."""
