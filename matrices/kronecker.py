"""Sum of ``rank`` Kronecker products, ``W = sum_k A_k (x) B_k`` (Van Loan & Pitsianis 1993;
the structure of Kronecker-compressed LLMs such as krony-PT and ProcrustesGPT).

``A_k`` is ``m1 x n1`` and ``B_k`` is ``m2 x n2`` with ``m = m1 m2``, ``n = n1 n2``:
``W[i1 m2 + i2, j1 n2 + j2] = sum_k A[k, i1, j1] B[k, i2, j2]``. The forward views a token
as ``X (n1, n2)`` and computes ``sum_k A_k X B_k^T`` as two products over all ``k`` at once,
contracting first whichever side is cheaper, never forming ``W``.

**Parameters and MACs differ.** It stores ``r (m1 n1 + m2 n2)`` numbers (what ``rho``
budgets, as for compression) but costs ``r min(m2 n1 (n2 + m1), m1 n2 (n1 + m2))`` MACs per
token, usually far more than it stores (about ``sqrt(n)`` times for balanced factors), so its
``macs_per_token`` overrides the default and the kernels suite's ideal speedup, taken from
MACs, can be below 1.

Projection: rearrange ``W`` into the ``(m1 n1) x (m2 n2)`` matrix ``R(W)`` whose row
``(i1, j1)`` is block ``W[i1 m2:(i1+1) m2, j1 n2:(j1+1) n2]`` flattened; a sum of ``r``
Kronecker products is exactly a rank-``r`` ``R(W)``, so the truncated SVD of ``R(W)`` is the
exact, Frobenius-optimal projection.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from structbench import calibrated
from structbench.convergence import Trace
from structbench.errors import NotApplicable, StructbenchError
from structbench.initialization import unit_gain_
from structbench.linalg import in_token_chunks, permute_last, svd_factors
from structbench.registry import register_family
from structbench.structured import Promises, StructuredLinear, balanced_split, check_positive_int, divisors


def _macs(m1: int, n1: int, m2: int, n2: int, rank: int) -> tuple[int, int]:
    """MACs per token contracting ``B`` first (``X B^T``, then ``A``) and ``A`` first."""
    return rank * m2 * n1 * (n2 + m1), rank * m1 * n2 * (n1 + m2)


@register_family("kronecker")
class KroneckerLinear(StructuredLinear):
    """``out_factor = m1`` and ``in_factor = n1`` (the sizes of ``A_k``), ``rank`` terms."""

    output_factors = ("A",)
    plot_order = 80
    plot_color = "#ff97ff"
    synthetic_kind = True
    promises = Promises(input_scaling=False)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, out_factor: int, in_factor: int,
                 rank: int) -> None:
        super().__init__(in_features, out_features, bias)
        self.out_factor = check_positive_int("out_factor", out_factor, self.family)
        self.in_factor = check_positive_int("in_factor", in_factor, self.family)
        self.rank = check_positive_int("rank", rank, self.family)
        if out_features % out_factor or in_features % in_factor:
            raise StructbenchError(f"kronecker: out_factor={out_factor} must divide out_features={out_features} and "
                                   f"in_factor={in_factor} must divide in_features={in_features}")
        m1, n1, m2, n2 = out_factor, in_factor, out_features // out_factor, in_features // in_factor
        if rank > min(m1 * n1, m2 * n2):
            raise StructbenchError(f"kronecker: rank {rank} exceeds min(m1 n1, m2 n2) = {min(m1 * n1, m2 * n2)}")
        self.A = nn.Parameter(torch.empty(rank, m1, n1))
        self.B = nn.Parameter(torch.empty(rank, m2, n2))
        # y sums r terms of n1 n2 products: each factor at unit gain, the sum scaled by 1/sqrt(r)
        unit_gain_(self.A, fan_in=n1 * rank)
        unit_gain_(self.B, fan_in=n2)

    def _sizes(self) -> tuple[int, int, int, int, int]:
        m1, n1 = self.out_factor, self.in_factor
        return m1, n1, self.out_features // m1, self.in_features // n1, self.rank

    def _b_first(self) -> bool:
        """Whether contracting ``B`` first is the cheaper order (what ``macs_per_token`` counts)."""
        b_first, a_first = _macs(*self._sizes())
        return b_first <= a_first

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        m1, n1, m2, n2, r = self._sizes()
        return in_token_chunks(self._forward_rows, x, bias, r * (n1 * m2 if self._b_first() else m1 * n2))

    def _forward_rows(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Two products whose operands are views, never a permuted copy of the ``r``-times-input
        intermediate (copying it cost 2-3x the whole forward): the first product's output
        order ``(token, j1, k, i2)`` (or ``(token, i1, k, j2)``) already puts the second
        product's contracted pair ``(j1, k)`` (``(k, j2)``) side by side, so only the small
        factor ``A`` (``B``) is rearranged to match. ``x`` is read in place when its rows are
        contiguous; a transposed or broadcast input is copied once."""
        m1, n1, m2, n2, r = self._sizes()
        tokens = x.shape[0]
        if self._b_first():
            t = F.linear(x.reshape(tokens * n1, n2), self.B.reshape(r * m2, n2))  # (N j1, (k, i2))
            a = self.A.permute(1, 2, 0).reshape(m1, n1 * r).expand(tokens, m1, n1 * r)  # (N, i1, (j1, k))
            t = t.view(tokens, n1 * r, m2)
            y = torch.bmm(a, t) if bias is None else torch.baddbmm(bias.view(1, m1, m2), a, t)  # (N, i1, i2)
            return y.view(tokens, self.out_features)
        a = self.A.permute(1, 0, 2).reshape(m1 * r, n1).expand(tokens, m1 * r, n1)
        t = torch.bmm(a, x.reshape(tokens, n1, n2))  # (N, (i1, k), j2)
        y = F.linear(t.view(tokens * m1, r * n2), self.B.permute(1, 0, 2).reshape(m2, r * n2))  # (N i1, i2)
        y = y.view(tokens, self.out_features)
        return y if bias is None else y + bias

    def to_dense(self) -> torch.Tensor:
        dense = torch.einsum("...kac,...kbd->...abcd", self.A, self.B)
        return dense.reshape(*self.A.shape[:-3], self.out_features, self.in_features)

    @torch.no_grad()
    def scale_input_(self, d: torch.Tensor) -> None:
        """``W diag(d)`` is again a Kronecker sum of the same shape exactly when ``diag(d)`` is a
        Kronecker product, ``d = d1 (x) d2``; any other ``d`` is refused (``promises.input_scaling``)."""
        _, n1, _, n2, _ = self._sizes()
        grid = d.unflatten(-1, (n1, n2)).to(self.A.dtype)
        d1, d2 = svd_factors(grid, 1)  # (..., n1, 1), (..., 1, n2)
        tolerance = 100 * torch.finfo(grid.dtype).eps * torch.linalg.matrix_norm(grid)
        if bool((torch.linalg.matrix_norm(d1 @ d2 - grid) > tolerance).any()):
            raise StructbenchError(f"kronecker: W diag(d) keeps the structure only for d = d1 (x) d2 with d1 of "
                                   f"size {n1} and d2 of size {n2}; this d is not such a product")
        self.A.mul_(d1.mT.unsqueeze(-2))
        self.B.mul_(d2.unsqueeze(-2))

    def _project_calibrated(self, weight: torch.Tensor, gram: torch.Tensor, *, damp: float = calibrated.DAMP,
                            refine_steps: int = calibrated.REFINE_STEPS, refine_lr: float = calibrated.REFINE_LR,
                            refine_tol: float = calibrated.TOL) -> Trace:
        """A diagonal Gram is not a Kronecker scaling in general, so the start is the plain
        (Frobenius-optimal) projection of ``W``, then the same Adam refinement on the weighted
        loss as every family without a closed form; an isotropic Gram (``G = c I``, for which
        the plain projection is already optimal) skips it."""
        calibrated.check_refine(refine_steps, refine_lr, refine_tol, self.family)
        white = calibrated.whitening(gram, damp)
        self._project(weight)
        return calibrated.refine(self, weight, white, active=~white.isotropic, steps=refine_steps, lr=refine_lr,
                                 tol=refine_tol)

    @property
    def hparams(self) -> dict[str, Any]:
        return {"out_factor": self.out_factor, "in_factor": self.in_factor, "rank": self.rank}

    @classmethod
    def weight_params(cls, out_features: int, in_features: int, out_factor: int, in_factor: int, rank: int) -> int:
        return rank * (out_factor * in_factor + (out_features // out_factor) * (in_features // in_factor))

    def macs_per_token(self) -> int:
        return min(_macs(*self._sizes()))

    @classmethod
    def _hparams_for(cls, out_features: int, in_features: int, rho: float) -> dict[str, Any]:
        """Over every factorisation with both factors true matrices (every side >= 2: with
        ``m1 = n2 = 1`` a Kronecker sum is just a low-rank matrix), the most terms within the
        parameter budget (``m1 n1 ~ m2 n2`` costs the least per term); ties go to more
        parameters kept, then to the most balanced factors (``m1 ~ m2``, ``n1 ~ n2``)."""
        budget = rho * out_features * in_features
        best: tuple[tuple[float, float, float], dict[str, Any]] | None = None
        for m1 in divisors(out_features):
            for n1 in divisors(in_features):
                m2, n2 = out_features // m1, in_features // n1
                if min(m1, n1, m2, n2) < 2:
                    continue
                per_rank = m1 * n1 + m2 * n2
                rank = min(int(budget // per_rank), m1 * n1, m2 * n2)
                if rank < 1:
                    continue
                score = (rank, rank * per_rank, -abs(math.log(m1 / m2)) - abs(math.log(n1 / n2)))
                if best is None or score > best[0]:
                    best = (score, {"out_factor": m1, "in_factor": n1, "rank": rank})
        if best is None:
            raise NotApplicable(f"kronecker: no factorisation keeps rho <= {rho} for shape {out_features}x{in_features}")
        return best[1]

    @classmethod
    def _hparams_at_rank(cls, out_features: int, in_features: int, rank: int) -> dict[str, Any]:
        """Balanced factors (``m1 ~ m2``, ``n1 ~ n2``): a rank-``r`` sum costs
        ``r (m1 n1 + m2 n2)`` parameters, about ``2 r sqrt(m n)``."""
        return {"out_factor": balanced_split(out_features), "in_factor": balanced_split(in_features), "rank": rank}

    def _project(self, weight: torch.Tensor) -> None:
        m1, n1, m2, n2, r = self._sizes()
        blocks = permute_last(weight.unflatten(-1, (n1, n2)).unflatten(-3, (m1, m2)), 0, 2, 1, 3)  # (i1, j1, i2, j2)
        u, v = svd_factors(blocks.flatten(-2).flatten(-3, -2), r)  # R(W) (m1 n1, m2 n2) -> (m1 n1, r), (r, m2 n2)
        self.A.copy_(u.mT.unflatten(-1, (m1, n1)))
        self.B.copy_(v.unflatten(-1, (m2, n2)))
