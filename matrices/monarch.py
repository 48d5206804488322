"""Monarch (Dao et al. 2022): two block-diagonal factors with a stride permutation between.

With ``b`` blocks, ``p = n/b``, ``s = m/b`` and ``q = min(p, s)``: ``L`` is ``(b, q, p)``,
``R`` is ``(b, s, q)``. Each ``L_k`` maps input chunk ``k`` to ``q`` values split into
``b`` groups of ``r = q/b``; ``R_l`` reads group ``l`` of every chunk and writes output
rows ``l::b``. Hence block ``W[l::b, k*p:(k+1)*p]`` is ``R_l[:, k-th group] L_k[l-th group]``,
a rank-``r`` matrix: the projection is an exact, optimal SVD of each block.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from structbench.errors import NotApplicable, StructbenchError
from structbench.linalg import interleave_blocks, permute_last, svd_factors
from structbench.initialization import unit_gain_
from structbench.registry import register_family
from structbench.structured import Promises, StructuredLinear, check_positive_int, divisors


def _check(out_features: int, in_features: int, blocks: int) -> None:
    q = min(out_features, in_features) // blocks if min(out_features, in_features) % blocks == 0 else 0
    if out_features % blocks or in_features % blocks or q % blocks or q == 0:
        raise StructbenchError(
            f"monarch: blocks={blocks} must divide {out_features} and {in_features} and blocks^2 must "
            f"divide min(out, in)={min(out_features, in_features)} (shape {out_features}x{in_features})"
        )


def _rows(x: torch.Tensor, bias: torch.Tensor | None, L: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """The PyTorch forward of ``(N, n)`` rows (also the fused forward's backward)."""
    b, q, _ = L.shape
    r, n_tok = q // b, x.shape[0]
    y = torch.bmm(x.view(n_tok, b, -1).transpose(0, 1), L.transpose(1, 2))  # (b_k, N, q)
    # stride permutation: group l of every chunk k feeds output block l
    y = y.view(b, n_tok, b, r).permute(2, 1, 0, 3).reshape(b, n_tok, b * r)  # (b_l, N, q)
    return interleave_blocks(torch.bmm(y, R.transpose(1, 2)), bias)  # (b_l, N, s) -> row i*b + l


@register_family("monarch")
class MonarchLinear(StructuredLinear):
    output_factors = ("R",)
    plot_order = 30
    plot_color = "#ab63fa"
    synthetic_kind = True
    promises = Promises(rho_margin=0.5)  # rho = 2/b for square shapes: jumps between valid block counts
    impls = ("torch", "triton")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, blocks: int) -> None:
        super().__init__(in_features, out_features, bias)
        self.blocks = check_positive_int("blocks", blocks, self.family)
        _check(out_features, in_features, blocks)
        b, p, s = blocks, in_features // blocks, out_features // blocks
        q = min(p, s)
        self.L = nn.Parameter(torch.empty(b, q, p))
        self.R = nn.Parameter(torch.empty(b, s, q))
        # Var(out) = q Var(R) * p Var(L) * Var(x): unit gain, like a dense layer at std 1/sqrt(n).
        unit_gain_(self.L, fan_in=p)
        unit_gain_(self.R, fan_in=q)

    @property
    def _rank(self) -> int:
        return self.L.shape[-2] // self.blocks

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.impl == "triton":
            from structbench import triton_kernels

            return triton_kernels.monarch(x, self.L, self.R, bias, _rows)
        return _rows(x, bias, self.L, self.R)

    def to_dense(self) -> torch.Tensor:
        b, r = self.blocks, self._rank
        tiles = torch.einsum("...lskr,...klrp->...lksp", self.R.unflatten(-1, (b, r)), self.L.unflatten(-2, (b, r)))
        return permute_last(tiles, 2, 0, 1, 3).reshape(*self.L.shape[:-3], self.out_features, self.in_features)

    @torch.no_grad()
    def scale_input_(self, d: torch.Tensor) -> None:
        self.L.mul_(d.unflatten(-1, (self.blocks, 1, -1)))  # L_k reads input chunk k

    @property
    def hparams(self) -> dict[str, Any]:
        return {"blocks": self.blocks}

    @classmethod
    def weight_params(cls, out_features: int, in_features: int, blocks: int) -> int:
        return min(out_features, in_features) * (out_features + in_features) // blocks

    @classmethod
    def _hparams_for(cls, out_features: int, in_features: int, rho: float) -> dict[str, Any]:
        budget = rho * out_features * in_features
        for b in divisors(math.gcd(out_features, in_features)):
            if min(out_features, in_features) % (b * b) == 0 and cls.weight_params(out_features, in_features, b) <= budget:
                return {"blocks": b}
        raise NotApplicable(f"monarch: no valid block count gives rho <= {rho} for shape {out_features}x{in_features}")

    def _project(self, weight: torch.Tensor) -> None:
        b, r = self.blocks, self._rank
        s, p = self.out_features // b, self.in_features // b
        tiles = permute_last(weight.unflatten(-1, (b, p)).unflatten(-3, (s, b)), 1, 2, 0, 3)  # (b_l, b_k, s, p) = W[l::b, k*p:(k+1)*p]
        u, v = svd_factors(tiles, r)  # (b_l, b_k, s, r), (b_l, b_k, r, p)
        self.R.copy_(permute_last(u, 0, 2, 1, 3).flatten(-2))
        self.L.copy_(permute_last(v, 1, 0, 2, 3).flatten(-3, -2))
