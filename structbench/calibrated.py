"""Calibrated projection: fit ``What`` to ``W`` under ``||(W - What) G^{1/2}||_F``.

``G = X X^T / N`` is the second moment of a layer's inputs (``structbench.models.calibration``
collects it): the weighted error is the error of the layer's *outputs* on those inputs, the
quantity that decides what a compressed network computes. Every family accepts
``from_dense(W, gram=G)``; this module holds what they share:

* ``Whitening``: a square root ``S`` of the damped Gram, ``S S^T = G + lambda I``, from an
  eigendecomposition (a rank-deficient ``G`` never fails the way a Cholesky does; the ridge
  ``lambda = damp * mean(diag G)`` keeps ``S`` invertible and the fit sane on directions the
  calibration text never excites).
* ``diagonal_start``: every family is closed under right-multiplication by a diagonal matrix
  (``scale_input_``), so for a diagonal ``G = D^2`` the weighted problem *is* the Frobenius
  problem on ``W D``: project ``W D``, then scale the fit by ``D^{-1}``. That is exact for a
  diagonal ``G`` (ASVD-style scaling, and ``G = I`` gives today's projection unchanged) and is
  the warm start for a full ``G``.
* ``refine``: Adam on the weighted loss from that start, through the family's own forward
  applied to the rows of ``S^T`` (``n`` tokens: ``S^T What^T = (What S)^T``), so no dense
  matrix is formed; the best iterate is kept, so refining never makes the fit worse.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn

from structbench.errors import StructbenchError


class Weighable(Protocol):
    """What the shared calibrated projection needs of a family (``StructuredLinear`` has it all)."""

    family: str
    in_features: int
    out_features: int

    def scale_input_(self, d: torch.Tensor) -> None: ...

    def refine_parameters(self) -> list[nn.Parameter]: ...

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor: ...

    def to_dense(self) -> torch.Tensor: ...

    def macs_per_token(self) -> int: ...


DAMP = 1e-4
"""Default ridge relative to the Gram's mean diagonal: enough to keep every ``S`` invertible,
too small to change the fit. Measured on SmolLM2-135M (whitened SVD of all 210 projections at
CR 20 %, 32,768 calibration tokens, perplexity on the test split): ridge 0 gives 63.16,
1e-4 63.19, 1e-2 64.5, so a larger ridge buys no generalisation here."""

REFINE_STEPS = 100
"""Adam steps on the weighted loss for families without a closed form (the same for all of
them, so that no family is favoured by compute)."""
REFINE_LR = 3e-2
"""Adam's step relative to each parameter's RMS at the start (scale-free across families).
Measured on SmolLM2 layer 10 at rho 0.5, weighted error after 100 steps at 3e-3 / 1e-2 / 3e-2
/ 1e-1: Monarch q .167 / .159 / .156 / .156, gate .334 / .315 / .309 / .308; Pixelfly q .167
/ .158 / .155 / .155, gate .322 / .306 / .299 / .297. The best iterate is kept, so a step
that overshoots costs steps, never the fit."""


@dataclass(frozen=True)
class Whitening:
    """``root`` with ``root root^T = G + lambda I`` (``n x n``, float64), its inverse, and the
    diagonal ``scale = sqrt(diag(G + lambda I))`` of the same damped Gram."""

    root: torch.Tensor
    root_inv: torch.Tensor
    scale: torch.Tensor
    diagonal: bool

    @property
    def gram(self) -> torch.Tensor:
        """The damped Gram ``root root^T`` the projections minimise against."""
        return self.root @ self.root.T


def check_gram(gram: Any, n: int, family: str) -> torch.Tensor:
    """The Gram as float64 after checking it is an ``n x n`` finite, symmetric matrix."""
    if not isinstance(gram, torch.Tensor) or gram.shape != (n, n):
        shape = tuple(gram.shape) if isinstance(gram, torch.Tensor) else type(gram).__name__
        raise StructbenchError(f"{family}: gram must be a {n}x{n} tensor (the inputs' second moment), got {shape}")
    g = gram.detach().to(torch.float64)
    if not bool(torch.isfinite(g).all()):
        raise StructbenchError(f"{family}: gram has non-finite entries")
    asym = (g - g.T).abs().max().item()
    if asym > 1e-6 * max(g.abs().max().item(), 1e-300):
        raise StructbenchError(f"{family}: gram is not symmetric (max |G - G^T| = {asym:.3g})")
    return (g + g.T) / 2


def whitening(gram: torch.Tensor, damp: float = DAMP) -> Whitening:
    """Square root of ``gram + damp * mean(diag) I`` by eigendecomposition (never fails).

    A zero Gram (a layer whose inputs were all zero) weighs nothing; it is treated as the
    identity, so the projection falls back to the Frobenius one instead of dividing by zero.
    """
    if not (isinstance(damp, (int, float)) and not isinstance(damp, bool) and 0 <= damp < math.inf):
        raise StructbenchError(f"damp must be a number >= 0, got {damp!r}")
    g = gram.to(torch.float64)
    n = g.shape[0]
    mean_diag = g.diagonal().mean().item()
    if mean_diag <= 0:
        g, mean_diag = torch.eye(n, dtype=torch.float64, device=g.device), 1.0
    g = g + damp * mean_diag * torch.eye(n, dtype=torch.float64, device=g.device)
    scale = g.diagonal().clamp(min=1e-300).sqrt()
    off = g - torch.diag(g.diagonal())
    diagonal = bool(off.abs().max().item() <= 1e-12 * g.diagonal().max().item())
    if diagonal:
        return Whitening(torch.diag(scale), torch.diag(1.0 / scale), scale, True)
    evals, evecs = torch.linalg.eigh(g)
    root_evals = evals.clamp(min=max(damp * mean_diag, 1e-12 * evals.max().item())).sqrt()
    return Whitening(evecs * root_evals, (evecs / root_evals).T, scale, False)


def weighted_error(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    """``||(W - What) G^{1/2}||_F / ||W G^{1/2}||_F`` from the (undamped) Gram, in float64."""
    w = weight.to(torch.float64)
    e = w - approx.to(torch.float64)
    g = gram.to(torch.float64)
    num = (e @ g * e).sum().item()
    den = (w @ g * w).sum().item()
    num = max(num, 0.0)
    return math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)


def diagonal_start(module: Weighable, weight: torch.Tensor, white: Whitening,
                   project: Callable[..., None], options: dict[str, Any]) -> None:
    """Project ``W D`` with the family's own (Frobenius) projection, then undo ``D``."""
    # Relative to the largest entry: the problem is scale-free, and x / x == 1 exactly, so an
    # isotropic Gram (G = I above all) hands the projection ``W`` itself, bit for bit.
    d = (white.scale / white.scale.max()).to(device=weight.device)
    project(weight * d.to(weight.dtype), **options)
    module.scale_input_((1.0 / d).to(weight.dtype))


def check_refine(steps: Any, lr: Any, family: str) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise StructbenchError(f"{family}: refine_steps must be an integer >= 0, got {steps!r}")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise StructbenchError(f"{family}: refine_lr must be a number > 0, got {lr!r}")


def refine(module: Weighable, weight: torch.Tensor, white: Whitening, *, steps: int = REFINE_STEPS,
           lr: float = REFINE_LR, progress: Callable[[int, float], None] | None = None) -> list[float]:
    """Adam on ``||(W - What) S||^2 / ||W S||^2`` over ``module.refine_parameters()``, keeping the
    best iterate (the start included). Returns the relative weighted error after each step.

    ``What S`` is the family's own forward on the ``n`` rows of ``S^T``, unless that forward
    costs more MACs per token than a dense product (a Kronecker sum, about ``sqrt(n)`` times
    more): then ``S^T What^T`` through ``to_dense()``, the same loss (forward equals
    ``to_dense``) at a fraction of the cost."""
    check_refine(steps, lr, module.family)
    params = [p for p in module.refine_parameters() if p.numel()]
    if steps == 0 or not params:
        return []
    dtype = params[0].dtype
    probe = white.root.T.to(device=weight.device, dtype=dtype).contiguous()  # n "tokens": rows of S^T
    target = probe @ weight.to(dtype).T  # (S^T W^T): what module(probe) should give
    norm2 = target.square().sum().clamp(min=torch.finfo(dtype).tiny)
    groups = [{"params": [p], "lr": lr * (p.detach().square().mean().sqrt().item() or 1.0)} for p in params]
    opt = torch.optim.Adam(groups)
    best = [p.detach().clone() for p in params]
    errors: list[float] = []
    if module.macs_per_token() > module.out_features * module.in_features:
        def apply() -> torch.Tensor:
            return probe @ module.to_dense().T
    else:
        def apply() -> torch.Tensor:
            return module._forward(probe, None)
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        with torch.no_grad():
            best_loss = float((apply() - target).square().sum() / norm2)
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = (apply() - target).square().sum() / norm2
            loss.backward()
            value = float(loss.detach())
            if value < best_loss:  # the loss of the parameters before this step
                best_loss = value
                for keep, p in zip(best, params):
                    keep.copy_(p.detach())
            opt.step()
            errors.append(math.sqrt(max(value, 0.0)))
            if progress is not None:
                progress(step + 1, errors[-1])
        with torch.no_grad():
            final = float((apply() - target).square().sum() / norm2)
            if final >= best_loss:
                for keep, p in zip(best, params):
                    p.copy_(keep)
            for p in params:
                p.grad = None
    return errors
