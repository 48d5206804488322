"""When an iterative projection stops, and the Adam its fits share, for a stack of fits at once.

Every iterative projection (BLAST's PrecGD, Gaudi-GBLR's polish, Pixelfly's alternation, the
calibrated refinement) runs on a stack of ``B`` same-shape problems (``from_dense_batch``;
a single ``from_dense`` is a stack of one) and stops each member on its own: once the
member's best objective has improved by less than ``tol`` (relative) over the last
``window`` steps, or at the cap. A stopped member's factors are frozen, so what a member
converges to does not depend on the other members of its stack.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from structbench.errors import StructbenchError

TOL = 1e-4
"""Default stop: the best objective (a relative error) improved by less than this fraction over
the window. At that rate a fit four times as long gains at most ``4 cap / window * TOL``
(0.8 % for a 400-step cap and a 20-step window), and the rate only falls as a fit converges."""
WINDOW = 20
"""Steps over which the improvement is measured for step-wise fits (PrecGD, Adam): long enough
that Adam's oscillation and PrecGD's slow phases do not read as a stall."""


def check_stop(cap_name: str, cap: Any, tol: Any, family: str, *, tol_name: str = "tol") -> None:
    """A step cap (an integer >= 0) and a tolerance (a number >= 0), or one clear error."""
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        raise StructbenchError(f"{family}: {cap_name} must be an integer >= 0, got {cap!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < math.inf:
        raise StructbenchError(f"{family}: {tol_name} must be a number >= 0, got {tol!r}")


@dataclass(frozen=True)
class Stop:
    """Stop a member once its best objective improved by less than ``tol`` over ``window``
    steps, or after ``cap`` steps."""

    cap: int
    tol: float = TOL
    window: int = WINDOW


@dataclass(frozen=True)
class Trace:
    """What the iterative phases of a stack's projection did, per member: ``steps`` taken and
    whether every phase stopped on its criterion (``converged``) rather than at its cap."""

    steps: torch.Tensor
    converged: torch.Tensor

    def then(self, other: "Trace | None") -> "Trace":
        """This phase followed by ``other``: steps add up, convergence needs both."""
        if other is None:
            return self
        return Trace(self.steps + other.steps, self.converged & other.converged)


def joined(first: Trace | None, second: Trace | None) -> Trace | None:
    """Two phases' traces as one (either may be a closed form's ``None``)."""
    return second if first is None else first.then(second)


class Tracker:
    """Per-member stopping of a stack of fits: ``record`` the objective after each step of the
    members still ``active``; it counts their steps and retires the stalled and the capped."""

    def __init__(self, start: torch.Tensor, stop: Stop, active: torch.Tensor | None = None) -> None:
        self.stop = stop
        start = start.detach().to(torch.float64)
        self.active = torch.ones_like(start, dtype=torch.bool) if active is None else active.clone()
        self.steps = torch.zeros_like(start, dtype=torch.long)
        self.converged = ~self.active
        self.best = start.clone()
        self._history: deque[torch.Tensor] = deque([self.best], maxlen=stop.window + 1)
        self._retire()

    @property
    def running(self) -> bool:
        return bool(self.active.any())

    def record(self, values: torch.Tensor) -> bool:
        """The objective of every member after the step just taken (members that were not
        active are ignored); returns whether any member goes on."""
        taken = self.active
        self.steps += taken
        values = values.detach().to(torch.float64)
        self.best = torch.where(taken & (values < self.best), values, self.best)
        self._history.append(self.best)
        self._retire()
        return self.running

    def _retire(self) -> None:
        stalled = self.best <= 0  # an exact fit has nothing left to gain
        if len(self._history) > self.stop.window:
            past = self._history[0]
            stalled |= past - self.best <= self.stop.tol * past
        self.converged |= self.active & stalled
        self.active = self.active & ~stalled & (self.steps < self.stop.cap)

    def trace(self) -> Trace:
        return Trace(self.steps.clone(), self.converged.clone())


def _member_mask(active: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return active.view(-1, *([1] * (like.dim() - 1)))


class Adam:
    """Adam (Kingma & Ba) over stacked parameters ``(B, ...)``: each member has its own step
    count and step size, and only the members ``step`` is told are active move, so a member's
    trajectory is the one it has alone."""

    def __init__(self, params: Sequence[torch.Tensor], lrs: Sequence[torch.Tensor | float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        size = self.params[0].shape[0]
        device = self.params[0].device
        self.lrs = [torch.as_tensor(lr, dtype=torch.float64, device=device).expand(size) for lr in lrs]
        self.betas, self.eps = betas, eps
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]
        self.count = torch.zeros(size, dtype=torch.float64, device=device)

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.count += active
        t = self.count.clamp(min=1)
        for p, lr, (m, v) in zip(self.params, self.lrs, self.moments):
            mask = _member_mask(active, p)
            g = p.grad
            m.copy_(torch.where(mask, m * b1 + g * (1 - b1), m))
            v.copy_(torch.where(mask, v * b2 + g * g * (1 - b2), v))
            size = _member_mask(lr / (1 - b1**t), p).to(p.dtype)
            root = _member_mask((1 - b2**t).sqrt(), p).to(p.dtype)
            p.sub_(torch.where(mask, size * m / (v.sqrt() / root + self.eps), 0))


def minimise(params: Sequence[torch.Tensor], loss: Callable[[], torch.Tensor], lrs: Sequence[torch.Tensor | float],
             stop: Stop, active: torch.Tensor | None = None,
             progress: Callable[[int, float], None] | None = None) -> Trace:
    """Adam on ``loss`` (every member's loss, ``(B,)``, leaving each parameter's gradient) from the
    parameters' current values, each member stopped by ``stop`` on ``sqrt(loss)`` (a relative
    error); every member ends at its best iterate, the start included, so fitting never makes
    a member worse. ``active`` members only (default all)."""
    params = [p for p in params if p.numel()]
    if not params:
        size = 1 if active is None else active.numel()
        return Trace(torch.zeros(size, dtype=torch.long), torch.ones(size, dtype=torch.bool))
    best = [p.detach().clone() for p in params]
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        best_loss = _evaluate(params, loss)
        tracker = Tracker(best_loss.clamp(min=0).sqrt(), stop, active)
        adam = Adam(params, lrs)
        while tracker.running:
            moving = tracker.active
            adam.step(moving)
            value = _evaluate(params, loss)
            better = moving & (value < best_loss)
            with torch.no_grad():
                for keep, p in zip(best, params):
                    keep.copy_(torch.where(_member_mask(better, p), p, keep))
            best_loss = torch.where(better, value, best_loss)
            tracker.record(value.clamp(min=0).sqrt())
            if progress is not None:
                progress(int(tracker.steps.max()), float(value[moving].clamp(min=0).sqrt().max()))
    with torch.no_grad():
        for keep, p in zip(best, params):
            p.copy_(keep)
            p.grad = None
    return tracker.trace()


def _evaluate(params: list[torch.Tensor], loss: Callable[[], torch.Tensor]) -> torch.Tensor:
    for p in params:
        p.grad = None
    return loss().detach()

