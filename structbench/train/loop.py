"""The one training loop every family and both suites share.

AdamW with decoupled weight decay on matrices only (biases, norms, embeddings' positions and
Gaudi's widths and locations are not pulled towards zero), linear warmup then cosine decay,
gradient-norm clipping, and evaluation at evenly spaced steps for the training curves. A
module that needs work between optimizer steps (Gaudi-GBLR's width projection and
annealing) exposes ``after_optimizer_step(progress)``; the loop calls it on every module
that has it, so the loop stays family-agnostic.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


@runtime_checkable
class StepHook(Protocol):
    def after_optimizer_step(self, progress: float) -> None:
        """Called after every optimizer step with the fraction of training done, in (0, 1]."""


@dataclass(frozen=True)
class Recipe:
    """One recipe for every family of a suite: nothing here depends on the structure."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: float  # fraction of the steps spent warming up linearly from 0
    min_lr: float  # final learning rate as a fraction of ``lr`` (cosine decay)
    grad_clip: float
    betas: tuple[float, float]
    evals: int  # evaluation points along training (the curves), the last at the final step

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based)."""
        warm = max(1, round(self.warmup * self.steps))
        if step < warm:
            return self.lr * (step + 1) / warm
        t = (step - warm) / max(1, self.steps - warm)
        return self.lr * (self.min_lr + (1 - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t)))

    def eval_steps(self) -> list[int]:
        """Steps after which to evaluate: ``evals`` evenly spaced, ending at ``steps``."""
        return sorted({max(1, round(self.steps * (k + 1) / self.evals)) for k in range(self.evals)})


@dataclass
class History:
    """Training curves: one entry per evaluation point."""

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # mean over the steps since the last point
    train_seconds: list[float] = field(default_factory=list)  # cumulative, evaluation excluded
    metrics: dict[str, list[float]] = field(default_factory=dict)

    def add(self, step: int, loss: float, seconds: float, metrics: dict[str, float]) -> None:
        self.step.append(step)
        self.train_loss.append(loss)
        self.train_seconds.append(seconds)
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append(value)


def optimizer_for(model: nn.Module, recipe: Recipe,
                  lr_scale: Mapping[nn.Parameter, float] | None = None) -> torch.optim.AdamW:
    """AdamW decaying only parameters with two or more dimensions (weights and factors); with
    ``lr_scale`` a parameter trains at ``lr * lr_scale[p]`` (1 for one it does not hold), one
    group per distinct (decay, scale), each group's scale in ``group["lr_scale"]``."""
    scale = lr_scale or {}
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((p.dim() >= 2, float(scale.get(p, 1.0))), []).append(p)
    return torch.optim.AdamW(
        [{"params": params, "weight_decay": recipe.weight_decay if decay else 0.0, "lr_scale": factor}
         for (decay, factor), params in sorted(groups.items(), key=lambda item: item[0], reverse=True)],
        lr=recipe.lr, betas=recipe.betas)


def train(
    model: nn.Module,
    recipe: Recipe,
    batches: Iterator[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    evaluate: Callable[[nn.Module], dict[str, float]],
    log: Callable[[str], None] | None = None,
    lr_scale: Mapping[nn.Parameter, float] | None = None,
) -> History:
    """Train ``model`` for ``recipe.steps`` steps on ``batches`` (moved to the model's device);
    ``evaluate(model)`` (called in eval mode, under ``no_grad``) gives the metrics recorded at
    each evaluation point; ``lr_scale`` multiplies chosen parameters' learning rates
    (``structbench.train.scaling``)."""
    device = next(model.parameters()).device
    opt = optimizer_for(model, recipe, lr_scale)
    hooks = [m for m in model.modules() if isinstance(m, StepHook)]
    history = History()
    points = set(recipe.eval_steps())
    losses: list[float] = []
    seconds = 0.0
    model.train()
    for step in range(recipe.steps):
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = recipe.lr_at(step) * group["lr_scale"]
        x, y = (t.to(device) for t in next(batches))
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        for hook in hooks:
            hook.after_optimizer_step((step + 1) / recipe.steps)
        losses.append(loss.item())
        seconds += time.perf_counter() - start
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"training loss became {losses[-1]} at step {step + 1}")
        if step + 1 in points:
            model.eval()
            with torch.no_grad():
                metrics = evaluate(model)
            model.train()
            history.add(step + 1, sum(losses) / len(losses), seconds, metrics)
            losses = []
            if log is not None:
                shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                log(f"  step {step + 1}/{recipe.steps} train_loss={history.train_loss[-1]:.4f} {shown} ({seconds:.0f}s)")
    return history
