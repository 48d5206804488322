"""BLAST (Lee et al., NeurIPS 2024): a ``b x b`` grid of blocks sharing low-rank bases.

Block ``A_ij = U_i diag(s_ij) V_j^T`` with ``U_i`` shared along block-row ``i`` and ``V_j``
along block-column ``j``. Parameters: ``U (b, p, r)``, ``V (b, q, r)``, ``S (b, b, r)`` with
``p = m/b``, ``q = n/b``; params = MACs/token = ``r (m + n + b^2)``. ``b = 1`` is low-rank,
a diagonal ``S`` is block-diagonal-low-rank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from structbench.convergence import TOL, Stop, Trace, Tracker, check_stop
from structbench.errors import NotApplicable, StructbenchError
from structbench.initialization import unit_gain_
from structbench.registry import register_family
from structbench.structured import ProgressFn, Promises, StructuredLinear, check_positive_int, divisors
from structbench.linalg import block_matmul, solve_right
from structbench.measure.flops import elementwise_fma

PREFERRED_BLOCKS = 4  # the paper's default grid for Llama and ViT layers
EXACT_BELOW = 1e-2
"""Relative error below which ``factorize`` forms the residual to measure it (see there)."""
TOKEN_MAJOR_UP_TO = 64
"""``tokens * blocks`` up to which the token-major forward is the faster layout (see ``_forward``)."""


def _check(out_features: int, in_features: int, blocks: int, rank: int) -> None:
    if out_features % blocks or in_features % blocks:
        raise StructbenchError(
            f"blast: blocks={blocks} must divide both dimensions of shape {out_features}x{in_features}"
        )
    if rank > min(out_features, in_features):
        raise StructbenchError(
            f"blast: rank {rank} exceeds min(out, in) = {min(out_features, in_features)} "
            f"for shape {out_features}x{in_features}"
        )


def blast_dense(U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """The ``m x n`` matrix of BLAST factors (used by ``to_dense`` and the factorization), for
    one set of factors or a stack of them (leading dims)."""
    b, p, _ = U.shape[-3:]
    q = V.shape[-2]
    dense = torch.einsum("...ipr,...ijr,...jqr->...ipjq", U, S, V)
    return dense.reshape(*U.shape[:-3], b * p, b * q)


def _coupled_sum(blocks: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """``out[a] = sum_c blocks[a, c] diag(S[a, c])`` for ``blocks (..., a, c, k, r)``: ``c``
    in-place multiply-adds into ``out (..., a, k, r)``, never the ``(a, c, k, r)`` product
    (``einsum`` formed and permuted it: at b=16 a quarter of a PrecGD step)."""
    out = blocks.new_zeros(*blocks.shape[:-3], *blocks.shape[-2:])
    for c in range(blocks.shape[-3]):
        out.addcmul_(blocks[..., c, :, :], S[..., c, :].unsqueeze(-2))
    return out


def _coupled_gram(S: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``out[a] = sum_c diag(S[a, c]) gram[c] diag(S[a, c])`` for ``S (..., a, c, r)``: ``c``
    multiply-adds of ``(..., a, r, r)`` into ``out``, ``b^2 r^2`` work, where the three-operand
    ``einsum`` went through ``(a, c, r, r)`` intermediates (56 % of a PrecGD step at b=16, r=256)."""
    out = gram.new_zeros(*S.shape[:-2], *gram.shape[-2:])
    for c in range(S.shape[-2]):
        s = S[..., c, :]
        out.addcmul_(s.unsqueeze(-1) * gram[..., c : c + 1, :, :], s.unsqueeze(-2))
    return out


@dataclass
class Factorization:
    """BLAST factors of a dense matrix (or a stack: leading dims), the relative error after each
    iteration (the largest among the members still iterating) and what each member did."""

    U: torch.Tensor
    V: torch.Tensor
    S: torch.Tensor
    errors: list[float] = field(default_factory=list)
    trace: Trace | None = None


STEPS = 1200
"""Cap on PrecGD iterations, four times the paper's 300 (which stops a one-block fit 3.4-3.6 %
above the Eckart-Young optimum on 96x48); a fit stops earlier once it stalls. The step size
decays linearly to 0 over the cap."""


def factorize(
    weight: torch.Tensor,
    blocks: int,
    rank: int,
    *,
    method: str = "precgd",
    steps: int = STEPS,
    tol: float = TOL,
    lr: float | None = None,
    delta0: float = 0.1,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Factorization:
    """Fit BLAST factors to ``weight`` (``m x n``, or a stack ``(B, m, n)`` fitted at once) by
    (preconditioned) gradient descent on ``||A - Ahat||_F^2``, each matrix until its relative
    error improves by less than ``tol`` over ``convergence.WINDOW`` iterations, or ``steps``.

    PrecGD right-multiplies each factor's gradient by the inverse of its damped Gram matrix
    (ScaledGD-style), which makes the step insensitive to the factors' conditioning: it
    converges from a tiny initialisation and keeps converging when ``rank`` exceeds the
    target's true rank, where plain GD stalls. The damping ``delta = delta0 ||A - Ahat||_F``
    is recomputed before every sub-step. Gradients are the closed-form ones of
    ``1/2 ||A - Ahat||^2``, so a PrecGD step of 1.0 is a damped least-squares update. Every
    matrix of a stack starts from the same seeded factors and has its own scale, damping and
    stop, so it ends where it would alone.

    The residual ``A - Ahat`` is never formed while the fit is loose. Each gradient splits
    into a term linear in ``A`` (``sum_j A_ij V_j diag(s_ij)``, one ``m n r`` product) and
    ``U_i H_i``, where ``H_i`` is the ``r x r`` Gram matrix the preconditioner needs anyway;
    the ``s`` step reuses the ``V`` step's ``A^T U``. An iteration then costs two ``m n r``
    products instead of six (three residuals, three contractions with them; measured 1.4-1.6x
    faster per iteration on one thread, the rest being the small solves), and the error
    follows from the same pieces, ``||A||^2 - 2 <A, Ahat> + ||Ahat||^2``. That expansion
    cancels catastrophically once the relative error nears ``sqrt(eps)``, so below
    ``EXACT_BELOW`` the error is recomputed from the formed residual (the regime of exact
    fits, where it sets the damping that lets PrecGD reach ~1e-7).
    """
    if method not in ("precgd", "gd"):
        raise StructbenchError(f"blast: unknown factorization method {method!r}; accepted: precgd, gd")
    check_positive_int("steps", steps, "blast")
    check_stop("steps", steps, tol, "blast")
    m, n = weight.shape[-2:]
    _check(m, n, blocks, rank)
    b, p, q, r = blocks, m // blocks, n // blocks, rank
    dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
    A = weight.to(dtype).reshape(-1, m, n)
    size = A.shape[0]
    scale = A.flatten(1).std(1)
    scale = torch.where(scale > 0, scale, 1.0)
    A = A / scale.view(-1, 1, 1)
    a_sq = A.square().sum((1, 2))
    a_sq = torch.where(a_sq > 0, a_sq, 1.0)
    rows = A.view(size, b, p, n).mT.contiguous()  # (i, n, p): block-row i transposed, rows[i] @ U_i = A_i.^T U_i
    cols = A.view(size, m, b, q).transpose(1, 2).contiguous()  # (j, m, q): block-column j
    lr = (1.0 if method == "precgd" else 1e-3) if lr is None else lr

    gen = torch.Generator().manual_seed(seed)
    start = [torch.randn(b, p, r, generator=gen, dtype=dtype) * (1e-3 / math.sqrt(r)),
             torch.randn(b, q, r, generator=gen, dtype=dtype) * (1e-3 / math.sqrt(r)),
             torch.randn(b, b, r, generator=gen, dtype=dtype)]
    U, V, S = (t.to(A.device).expand(size, *t.shape).clone() for t in start)

    def squared_error(cross: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
        """``||A - Ahat||^2`` per matrix from ``<A, Ahat>`` and ``||Ahat||^2``, formed exactly when small."""
        sq = a_sq - 2.0 * cross + fit
        small = sq < EXACT_BELOW**2 * a_sq
        if bool(small.any()):
            sq = torch.where(small, (blast_dense(U, S, V) - A).square().sum((-2, -1)), sq)
        return sq

    precondition = method == "precgd"

    def step(factor: torch.Tensor, gram: torch.Tensor, linear: torch.Tensor, sq: torch.Tensor, eta: float) -> torch.Tensor:
        grad = factor @ gram - linear
        if precondition:
            grad = solve_right(grad, gram, _per_matrix(delta0 * sq.clamp(min=0).sqrt(), gram))
        return torch.where(_per_matrix(moving, factor), factor - eta * grad, factor)

    def total(t: torch.Tensor) -> torch.Tensor:
        return t.flatten(1).sum(1)

    errors: list[float] = []
    sq = (blast_dense(U, S, V) - A).square().sum((-2, -1))
    tracker = Tracker((sq.clamp(min=0) / a_sq).sqrt(), Stop(steps, tol))
    gram_v = V.mT @ V  # (j, r, r)
    for t in range(steps):
        moving = tracker.active
        eta = lr * (1.0 - t / steps)
        # U_i: linear term P_i = sum_j A_ij V_j diag(s_ij); Gram H_i = sum_j diag(s_ij) V_j^T V_j diag(s_ij)
        av = (cols @ V).view(size, b, b, p, r)  # (j, i, p, r): A_ij V_j
        P = _coupled_sum(av.transpose(1, 2), S)
        H = _coupled_gram(S, gram_v)
        U = step(U, H, P, sq, eta)
        gram_u = U.mT @ U
        sq = squared_error(total(U * P), total(gram_u * H))
        # V_j: linear term Q_j = sum_i A_ij^T U_i diag(s_ij); Gram K_j = sum_i diag(s_ij) U_i^T U_i diag(s_ij)
        au = (rows @ U).view(size, b, b, q, r)  # (i, j, q, r): A_ij^T U_i
        Q = _coupled_sum(au.transpose(1, 2), S.transpose(1, 2))
        K = _coupled_gram(S.transpose(1, 2), gram_u)
        V = step(V, K, Q, sq, eta)
        gram_v = V.mT @ V
        sq = squared_error(total(V * Q), total(gram_v * K))
        # s_ij: linear term d_ij = diag(U_i^T A_ij V_j); Gram G_ij = (U_i^T U_i) * (V_j^T V_j), b^2 of
        # them (r x r each): the gradient is taken before G is damped in place, and the fit
        # term of the error subtracts the damping again (s (G + delta I) s^T - delta |s|^2).
        D = (au * V.unsqueeze(1)).sum(-2).unsqueeze(-2)  # (i, j, 1, r)
        G = gram_u.unsqueeze(2) * gram_v.unsqueeze(1)  # (i, j, r, r)
        s_row = S.unsqueeze(-2)
        grad = s_row @ G - D
        delta = delta0 * sq.clamp(min=0).sqrt() if precondition else torch.zeros_like(sq)
        if precondition:
            G.diagonal(dim1=-2, dim2=-1).add_(_per_matrix(delta, G[..., 0]))
            grad = solve_right(grad, G, 0.0)
        s_row = torch.where(_per_matrix(moving, s_row), s_row - eta * grad, s_row)
        S = s_row.squeeze(-2)
        sq = squared_error(total(s_row * D), total(s_row @ G * s_row) - delta * total(S.square()))
        error = (sq.clamp(min=0) / a_sq).sqrt()
        errors.append(float(error[moving].max()))
        if progress is not None:
            progress(t + 1, errors[-1])
        if not tracker.record(error):
            break
    # The normalisation scale goes back into the coupling, leaving U and V as fitted.
    S = S * scale.view(-1, 1, 1, 1)
    lead = weight.shape[:-2]
    U, V, S = (f.reshape(*lead, *f.shape[1:]) for f in (U, V, S))
    return Factorization(U, V, S, errors, tracker.trace())


def _per_matrix(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-matrix ``values`` ``(B,)`` shaped to broadcast against ``like`` ``(B, ...)``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _rows(x: torch.Tensor, bias: torch.Tensor | None, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """The PyTorch forward of ``(N, n)`` rows (also the fused forward's backward): two layouts
    of the same three steps, picked by the work per call (measured with the kernels suite, 1
    thread, rho 0.5). For few blocks and tokens the token-major one, whose coupling is ``b``
    cheap multiply-adds; otherwise the feature-major one, whose coupling is one batched
    product and whose first product reads ``x`` transposed in place (at b=16, 1024x1024:
    efficiency 0.54 -> 0.67-0.79 at 16-128 tokens)."""
    if x.shape[0] * U.shape[0] <= TOKEN_MAJOR_UP_TO:
        return _token_major(x, bias, U, S, V)
    return _feature_major(x, bias, U, S, V)


def _token_major(x: torch.Tensor, bias: torch.Tensor | None, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    b, n_tok = U.shape[0], x.shape[0]
    y = torch.bmm(x.view(n_tok, b, -1).transpose(0, 1), V)  # (b_j, N, r): y_j = x_j V_j
    # Coupling z_i = sum_j s_ij * y_j as b broadcast multiply-adds into z, for all i at
    # once: b^2 N r MACs, no temporary beyond z itself. In-place is autograd-safe:
    # addcmul's backward needs y and S, never z.
    z = y.new_zeros(b, n_tok, y.shape[-1])  # (b_i, N, r)
    for j in range(b):
        z.addcmul_(y[j], S[:, j].unsqueeze(1))
    out = block_matmul(z, U.transpose(1, 2), bias)  # (b_i, N, p): out_i = z_i U_i^T + bias_i
    return out.transpose(0, 1).reshape(n_tok, -1)


def _feature_major(x: torch.Tensor, bias: torch.Tensor | None, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    b, n_tok = U.shape[0], x.shape[0]
    y = torch.bmm(V.mT, x.T.view(b, -1, n_tok))  # (b_j, r, N): y_j = V_j^T x_j^T, x read in place
    # The coupling per rank index k is a b x b product, z[k] = S[:, :, k] y[:, k]: one bmm
    # over k whose operands are views (S rearranged first: b^2 r numbers), where the
    # token-major layout needed b passes over z.
    z = torch.bmm(S.permute(2, 0, 1).contiguous(), y.transpose(0, 1))  # (r, b_i, N)
    out = block_matmul(z.permute(1, 2, 0), U.transpose(1, 2), bias)  # (b_i, N, p)
    return out.transpose(0, 1).reshape(n_tok, -1)


@register_family("blast")
class BlastLinear(StructuredLinear):
    output_factors = ("U",)
    plot_order = 40
    plot_color = "#ffa15a"
    synthetic_kind = True
    mac_handles = {"aten::addcmul": elementwise_fma, "aten::addcmul_": elementwise_fma}  # the coupling
    impls = ("torch", "triton")
    promises = Promises(exact_projection=False, projection_tolerance=0.25)
    """Bound for PrecGD (300 steps) on a random member *of the same rank*: that problem is
    non-convex and small test shapes put each block near full rank (64x64, b=4, r=14 of 16);
    measured 0.13-0.18. With rank above the target's (the regime the paper recommends) the
    error drops to ~1e-2, and a low-rank target is fitted to ~1e-7 (tests/test_blast.py)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, blocks: int, rank: int
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.blocks = check_positive_int("blocks", blocks, self.family)
        self.rank = check_positive_int("rank", rank, self.family)
        _check(out_features, in_features, blocks, rank)
        b, p, q = blocks, out_features // blocks, in_features // blocks
        self.U = nn.Parameter(torch.empty(b, p, rank))
        self.V = nn.Parameter(torch.empty(b, q, rank))
        self.S = nn.Parameter(torch.empty(b, b, rank))
        # Unit gain per factor: x_j V_j sums q terms (std 1/sqrt(q)), the coupling sums b
        # blocks (std 1/sqrt(b)), z U_i^T sums r terms (std 1/sqrt(r)); the product then
        # has the output variance of a dense layer initialised with std 1/sqrt(n).
        unit_gain_(self.V, fan_in=q)
        unit_gain_(self.S, fan_in=b)
        unit_gain_(self.U, fan_in=rank)

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.impl == "triton":
            from structbench import triton_kernels

            return triton_kernels.blast(x, self.U, self.S, self.V, bias, _rows)
        return _rows(x, bias, self.U, self.S, self.V)

    def to_dense(self) -> torch.Tensor:
        return blast_dense(self.U, self.S, self.V)

    @torch.no_grad()
    def scale_input_(self, d: torch.Tensor) -> None:
        self.V.mul_(d.unflatten(-1, (self.blocks, -1, 1)))  # V_j spans input block j

    @property
    def hparams(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "rank": self.rank}

    @classmethod
    def weight_params(cls, out_features: int, in_features: int, blocks: int, rank: int) -> int:
        return rank * (out_features + in_features + blocks * blocks)

    @classmethod
    def _hparams_for(cls, out_features: int, in_features: int, rho: float) -> dict[str, Any]:
        """The valid block count nearest the paper's 4 (ties to fewer), then the largest rank."""
        candidates = divisors(math.gcd(out_features, in_features))
        blocks = min(candidates, key=lambda d: (abs(d - PREFERRED_BLOCKS), d))
        rank = int(rho * out_features * in_features // (out_features + in_features + blocks * blocks))
        rank = min(rank, min(out_features, in_features))
        if rank < 1:
            raise NotApplicable(f"blast: rho={rho} leaves no rank-1 factor for shape {out_features}x{in_features}")
        return {"blocks": blocks, "rank": rank}

    def _project(
        self,
        weight: torch.Tensor,
        *,
        method: str = "precgd",
        steps: int = STEPS,
        tol: float = TOL,
        lr: float | None = None,
        delta0: float = 0.1,
        seed: int = 0,
        progress: ProgressFn | None = None,
    ) -> Trace:
        fit = factorize(weight, self.blocks, self.rank, method=method, steps=steps, tol=tol, lr=lr, delta0=delta0,
                        seed=seed, progress=progress)
        self.U.copy_(fit.U)
        self.V.copy_(fit.V)
        self.S.copy_(fit.S)
        return fit.trace
