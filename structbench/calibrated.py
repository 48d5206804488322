"""Calibrated projection: fit ``What`` to ``W`` under ``||(W - What) G^{1/2}||_F``.

``G = X X^T / N`` is the second moment of a layer's inputs (``structbench.models.calibration``
collects it): the weighted error is the error of the layer's *outputs* on those inputs, the
quantity that decides what a compressed network computes. Every family accepts
``from_dense(W, gram=G)`` (and ``from_dense_batch`` a stack of weights and their Grams); this
module holds what they share, each piece for one matrix or a stack (leading dims):

* ``Whitening``: a square root ``S`` of the damped Gram, ``S S^T = G + lambda I``, from an
  eigendecomposition (a rank-deficient ``G`` never fails the way a Cholesky does; the ridge
  ``lambda = damp * mean(diag G)`` keeps ``S`` invertible and the fit sane on directions the
  calibration text never excites).
* ``diagonal_start``: every family is closed under right-multiplication by a diagonal matrix
  (``scale_input_``), so for a diagonal ``G = D^2`` the calibrated problem *is* the Frobenius
  problem on ``W D``: project ``W D``, then scale the fit by ``D^{-1}``. That is exact for a
  diagonal ``G`` (ASVD-style scaling, and ``G = I`` gives the Frobenius projection unchanged)
  and is the warm start for a full ``G``.
* ``refine``: Adam on the weighted loss from that start until it stops improving
  (``structbench.convergence``), keeping each member's best iterate, so refining never makes
  a fit worse. The loss is ``tr(E G E^T)`` for ``E = What - W`` with ``What`` from the
  family's ``to_dense``: one ``m n^2`` product ``E G`` gives both the loss and its gradient
  ``2 E G``, and a whole stack is one batched product.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn

from structbench.convergence import TOL, Stop, Trace, check_stop, minimise
from structbench.errors import StructbenchError


class Calibratable(Protocol):
    """What the shared calibrated projection needs of a family (``StructuredLinear`` has it all);
    on a stacked module (``from_dense_batch``) every tensor has the stack's leading dim."""

    family: str
    in_features: int
    out_features: int

    def scale_input_(self, d: torch.Tensor) -> None: ...

    def refine_parameters(self) -> list[nn.Parameter]: ...

    def to_dense(self) -> torch.Tensor: ...


DAMP = 1e-4
"""Default ridge relative to the Gram's mean diagonal: enough to keep every ``S`` invertible,
too small to change the fit. Measured on SmolLM2-135M (whitened SVD of all 210 projections at
CR 20 %, 32,768 calibration tokens, perplexity on the test split): ridge 0 gives 63.16,
1e-4 63.19, 1e-2 64.5, so a larger ridge buys no generalisation here."""

REFINE_STEPS = 400
"""Cap on the Adam steps of the refinement (families without a closed form, all alike); each
fit stops earlier once it stalls (``structbench.convergence``). With outlier-heavy LLM
activations 100 steps left Monarch's and BTT's output error 1.6-1.95x above a 1,000-step fit."""
REFINE_LR = 3e-2
"""Adam's step relative to each parameter's RMS at the start (scale-free across families).
Measured on SmolLM2 layer 10 at rho 0.5, weighted error after 100 steps at 3e-3 / 1e-2 / 3e-2
/ 1e-1: Monarch q .167 / .159 / .156 / .156, gate .334 / .315 / .309 / .308; Pixelfly q .167
/ .158 / .155 / .155, gate .322 / .306 / .299 / .297. The best iterate is kept, so a step
that overshoots costs steps, never the fit."""


@dataclass(frozen=True)
class Whitening:
    """``root`` with ``root root^T = G + lambda I`` (``n x n``, float64, or a stack of them), its
    inverse, the diagonal ``scale = sqrt(diag(G + lambda I))`` of the same damped Gram, and
    per matrix whether that Gram is ``diagonal`` (a bool tensor of the stack's shape)."""

    root: torch.Tensor
    root_inv: torch.Tensor
    scale: torch.Tensor
    diagonal: torch.Tensor

    @property
    def gram(self) -> torch.Tensor:
        """The damped Gram ``root root^T`` the projections minimise against."""
        return self.root @ self.root.mT

    @property
    def isotropic(self) -> torch.Tensor:
        """Per matrix, whether the damped Gram is a multiple of the identity."""
        return self.diagonal & (self.scale == self.scale[..., :1]).all(-1)


def check_gram(gram: Any, n: int, family: str, size: int | None = None) -> torch.Tensor:
    """The Gram as float64 after checking it is an ``n x n`` finite, symmetric matrix (a stack
    of ``size`` of them when ``size`` is given)."""
    shape = (n, n) if size is None else (size, n, n)
    if not isinstance(gram, torch.Tensor) or gram.shape != shape:
        got = tuple(gram.shape) if isinstance(gram, torch.Tensor) else type(gram).__name__
        want = f"{n}x{n} tensor" if size is None else f"{size}x{n}x{n} tensor (one Gram per weight)"
        raise StructbenchError(f"{family}: gram must be a {want} (the inputs' second moment), got {got}")
    g = gram.detach().to(torch.float64)
    if not bool(torch.isfinite(g).all()):
        raise StructbenchError(f"{family}: gram has non-finite entries")
    asym = (g - g.mT).abs().max().item()
    if asym > 1e-6 * max(g.abs().max().item(), 1e-300):
        raise StructbenchError(f"{family}: gram is not symmetric (max |G - G^T| = {asym:.3g})")
    return (g + g.mT) / 2


def whitening(gram: torch.Tensor, damp: float = DAMP) -> Whitening:
    """Square root of ``gram + damp * mean(diag) I`` by eigendecomposition (never fails), for one
    Gram or a stack.

    A zero Gram (a layer whose inputs were all zero) weighs nothing; it is treated as the
    identity, so the projection falls back to the Frobenius one instead of dividing by zero.
    """
    if not (isinstance(damp, (int, float)) and not isinstance(damp, bool) and 0 <= damp < math.inf):
        raise StructbenchError(f"damp must be a number >= 0, got {damp!r}")
    g = gram.to(torch.float64)
    n = g.shape[-1]
    eye = torch.eye(n, dtype=torch.float64, device=g.device)
    mean_diag = g.diagonal(dim1=-2, dim2=-1).mean(-1)
    empty = mean_diag <= 0
    g = torch.where(empty[..., None, None], eye, g)
    mean_diag = torch.where(empty, 1.0, mean_diag)
    g = g + (damp * mean_diag)[..., None, None] * eye
    diag = g.diagonal(dim1=-2, dim2=-1)
    scale = diag.clamp(min=1e-300).sqrt()
    off = (g - torch.diag_embed(diag)).abs().amax((-2, -1))
    diagonal = off <= 1e-12 * diag.amax(-1)
    root, root_inv = torch.diag_embed(scale), torch.diag_embed(1.0 / scale)
    if not bool(diagonal.all()):
        evals, evecs = torch.linalg.eigh(g)
        floor = torch.maximum(damp * mean_diag, 1e-12 * evals.amax(-1))
        root_evals = torch.maximum(evals, floor[..., None]).sqrt()
        full = ~diagonal[..., None, None]
        root = torch.where(full, evecs * root_evals.unsqueeze(-2), root)
        root_inv = torch.where(full, (evecs / root_evals.unsqueeze(-2)).mT, root_inv)
    return Whitening(root, root_inv, scale, diagonal)


def weighted_error(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    """``||(W - What) G^{1/2}||_F / ||W G^{1/2}||_F`` from the (undamped) Gram, in float64."""
    w = weight.to(torch.float64)
    e = w - approx.to(torch.float64)
    g = gram.to(torch.float64)
    num = (e @ g * e).sum().item()
    den = (w @ g * w).sum().item()
    num = max(num, 0.0)
    return math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)


def diagonal_start(module: Calibratable, weight: torch.Tensor, white: Whitening,
                   project: Callable[..., Trace | None], options: dict[str, Any]) -> Trace | None:
    """Project ``W D`` with the family's own (Frobenius) projection, then undo ``D``."""
    # Relative to the largest entry: the problem is scale-free, and x / x == 1 exactly, so an
    # isotropic Gram (G = I above all) hands the projection ``W`` itself, bit for bit.
    d = (white.scale / white.scale.amax(-1, keepdim=True)).to(device=weight.device)
    trace = project(weight * d.to(weight.dtype).unsqueeze(-2), **options)
    module.scale_input_((1.0 / d).to(weight.dtype))
    return trace


def check_refine(steps: Any, lr: Any, tol: Any, family: str) -> None:
    check_stop("refine_steps", steps, tol, family, tol_name="refine_tol")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise StructbenchError(f"{family}: refine_lr must be a number > 0, got {lr!r}")


def refine(module: Calibratable, weight: torch.Tensor, white: Whitening, *, active: torch.Tensor | None = None,
           steps: int = REFINE_STEPS, lr: float = REFINE_LR, tol: float = TOL,
           progress: Callable[[int, float], None] | None = None) -> Trace:
    """Adam on ``||(W - What) S||^2 / ||W S||^2`` over ``module.refine_parameters()`` for a stack
    ``weight`` ``(B, m, n)`` of a stacked module, the ``active`` members only (default all),
    each until it stalls or has taken ``steps``; every member keeps its best iterate.

    Through ``to_dense``, ``tr(E G E^T)`` with ``E = What - W`` costs one batched ``E G`` for the
    loss and its gradient ``2 E G`` together (the family's forward on the ``n`` rows of ``S^T``
    would cost ``n`` times its MACs, and twice again for autograd's backward)."""
    check_refine(steps, lr, tol, module.family)
    params = [p for p in module.refine_parameters() if p.numel()]
    dtype = params[0].dtype
    gram = white.gram.to(device=weight.device, dtype=dtype)
    target = weight.to(dtype)
    norm2 = (target @ gram * target).sum((-2, -1)).clamp(min=torch.finfo(dtype).tiny)
    scale = norm2.view(-1, 1, 1)

    def loss() -> torch.Tensor:
        approx = module.to_dense()
        with torch.no_grad():
            error = approx.detach() - target
            eg = error @ gram
            value = (eg * error).sum((-2, -1)) / norm2
        approx.backward(2 * eg / scale)
        return value

    lrs = [lr * _rms(p) for p in params]
    return minimise(params, loss, lrs, Stop(steps, tol), active, progress)


def _rms(p: torch.Tensor) -> torch.Tensor:
    """Each member's RMS of ``p`` (a stacked parameter), 1 where it is zero."""
    rms = p.detach().to(torch.float64).square().flatten(1).mean(1).sqrt()
    return torch.where(rms > 0, rms, 1.0)
