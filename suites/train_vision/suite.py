"""Suite ``train-vision``: a small ViT trained from scratch on Fashion-MNIST with its block
linears replaced by each family at several parameter budgets; test accuracy against the whole
model's MACs relative to dense.

One recipe (AdamW, warmup + cosine, epochs, shift-and-flip augmentation, seed) for every
family; one case = one (family, rho, seed) training run (``structbench.train.task``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from structbench.config import boolean, non_negative_int, optional_positive_int, positive_int
from structbench.errors import StructbenchError
from structbench.suite import Metric, RunContext
from structbench.train import task as common
from structbench.train.blocks import BLOCK_LINEARS
from structbench.train.data import fashion_mnist, fashion_mnist_files, normalise, require_fashion_mnist, shift_and_flip
from structbench.train.loop import Batch
from structbench.train.vit import ViT, ViTConfig

CONFIG_PATH = Path(__file__).with_name("default.yaml")
EVAL_BATCH = 1000


def _path(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise StructbenchError(f"{where} must be a folder path, got {value!r}")
    return value


def _build(cfg: dict[str, Any]) -> nn.Module:
    return ViT(ViTConfig(**cfg["model"]))


def _example(cfg: dict[str, Any]) -> torch.Tensor:
    return torch.zeros(1, ViTConfig.image, ViTConfig.image)


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
        raise StructbenchError(f"train-vision: {len(train_y)} training images are fewer than one batch of {rec['batch_size']}")
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


TASK = common.Task(
    name="train-vision",
    model={"patch": positive_int, "dim": positive_int, "depth": positive_int,
           "heads": positive_int, "mlp_ratio": positive_int},
    data={"root": _path, "train_images": optional_positive_int, "test_images": optional_positive_int},
    recipe={**common.RECIPE, "epochs": positive_int, "shift": non_negative_int, "flip": boolean},
    layers={"blocks": BLOCK_LINEARS, "blocks+patch": rf"{BLOCK_LINEARS}|^patch_embed$"},
    build=_build,
    example=_example,
    prepare=_prepare,
    loss=F.cross_entropy,
    require=lambda cfg: require_fashion_mnist(cfg["data"]["root"]),
    inputs=lambda cfg: fashion_mnist_files(cfg["data"]["root"]),
)


SUITE = common.make_suite(
    TASK,
    description="A small ViT trained from scratch on Fashion-MNIST with structured block linears: "
    "test accuracy vs whole-model MACs relative to dense (fvcore) per family and parameter budget",
    config_path=CONFIG_PATH,
    metrics={
        "test_acc": Metric("", higher_is_better=True, description="top-1 accuracy on the test images"),
        "test_loss": Metric("nat", higher_is_better=False, description="cross-entropy on the test images"),
    },
    headline=("test_acc", "test_loss"),
)
