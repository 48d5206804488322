"""Block Tensor-Train, two cores (Qiu et al., "Compute Better Spent", ICML 2024).

Factor ``n = n1 n2`` and ``m = m1 m2``; input column ``j = j1 n2 + j2``, output row
``i = i1 m2 + i2``. Core 1 ``C1 (n1, n2, m2 r)`` maps each input chunk ``j1`` (``n2``
values) to ``m2 r`` values; core 2 ``C2 (m2, n1 r, m1)`` maps, for each ``i2``, the ``n1 r``
values meant for it to ``m1`` outputs:

``W[(i1, i2), (j1, j2)] = sum_a C2[i2, (j1, a), i1] C1[j1, j2, (i2, a)]``.

Params = MACs/token = ``r n1 m2 (n2 + m1)`` (square ``n = m = s^2`` with every factor ``s``:
``2 r n^1.5``). For each ``(i2, j1)`` the slice ``W[(:, i2), (j1, :)]`` (``m1 x n2``) is a rank-``r``
product, so truncated SVD per slice is the exact, Frobenius-optimal projection, the same
per-block SVD as Monarch; ``n1 = m2 = b`` with rank ``min(n, m) / b^2`` is Monarch with ``b``
blocks (rank 1 when ``n = m = b^2``).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from structbench.errors import NotApplicable, StructbenchError
from structbench.initialization import unit_gain_
from structbench.linalg import in_token_chunks, interleave_blocks, permute_last, svd_factors
from structbench.registry import register_family
from structbench.structured import StructuredLinear, balanced_split, check_positive_int, divisors


def _check(out_features: int, in_features: int, in_blocks: int, out_blocks: int, rank: int) -> None:
    if in_features % in_blocks or out_features % out_blocks:
        raise StructbenchError(f"btt: in_blocks={in_blocks} must divide in_features={in_features} and "
                               f"out_blocks={out_blocks} must divide out_features={out_features}")
    most = min(out_features // out_blocks, in_features // in_blocks)
    if rank > most:
        raise StructbenchError(f"btt: rank {rank} exceeds min(m1, n2) = {most} for shape {out_features}x{in_features} "
                               f"with in_blocks={in_blocks}, out_blocks={out_blocks}")


CHUNK_ROWS = 64
"""Tokens per chunk when the forward is chunked (``linalg.in_token_chunks``: only when the
call's intermediate exceeds its budget). A fixed count, not the budget's: the products need
rows more than the intermediate needs cache. Measured at rho 0.5, 1 thread, efficiency at
128 / 512 tokens by rows per chunk 16 / 64 / 256 / all: 4096x4096 0.36 / 0.45 / 0.46 / 0.39
and 0.35 / 0.59 / 0.73 / 0.52; 11008x4096 0.54 / 0.67 / 0.50 / 0.48 and 0.43 / 0.53 / 0.42 /
0.40 (the budget's own count, 5 rows there: 0.10 / 0.08); at 1024x1024 chunks of 64 beat the
budget's 128 (medians of 3 runs at 128 / 512 tokens, 2 threads: 0.60 / 0.47 against
0.48 / 0.37). A small intermediate (rho 0.2 at 11008x4096: one block, rank 597) is not
chunked; chunks of 64 cost it 0.2-0.4."""


@register_family("btt")
class BTTLinear(StructuredLinear):
    """``in_blocks = n1`` input chunks, ``out_blocks = m2`` output groups, TT rank ``rank``."""

    output_factors = ("C2",)
    plot_order = 70
    plot_color = "#b6e880"
    synthetic_kind = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, in_blocks: int, out_blocks: int,
                 rank: int) -> None:
        super().__init__(in_features, out_features, bias)
        self.in_blocks = check_positive_int("in_blocks", in_blocks, self.family)
        self.out_blocks = check_positive_int("out_blocks", out_blocks, self.family)
        self.rank = check_positive_int("rank", rank, self.family)
        _check(out_features, in_features, in_blocks, out_blocks, rank)
        n1, n2, m2, m1 = in_blocks, in_features // in_blocks, out_blocks, out_features // out_blocks
        self.C1 = nn.Parameter(torch.empty(n1, n2, m2 * rank))
        self.C2 = nn.Parameter(torch.empty(m2, n1 * rank, m1))
        # core 1 sums n2 inputs, core 2 sums n1 r of core 1's outputs: unit gain per core
        unit_gain_(self.C1, fan_in=n2)
        unit_gain_(self.C2, fan_in=n1 * rank)

    def _sizes(self) -> tuple[int, int, int, int, int]:
        n1, m2, r = self.in_blocks, self.out_blocks, self.rank
        return n1, self.in_features // n1, m2, self.out_features // m2, r

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        n1, _, m2, _, r = self._sizes()
        return in_token_chunks(self._forward_rows, x, bias, n1 * m2 * r, rows=CHUNK_ROWS)

    def _forward_rows(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Feature-major first core, so that the regrouping between the cores moves chunks
        of ``r N`` contiguous floats (token-major, chunks of ``r``: 3.9 GB/s, as long as
        both products at 512 tokens); the second core reads the result transposed in place."""
        n1, n2, m2, _, r = self._sizes()
        tokens = x.shape[0]
        z = torch.bmm(self.C1.mT, x.T.view(n1, n2, tokens))  # (n1, (m2, r), N), x read in place
        z = z.view(n1, m2, r * tokens).transpose(0, 1).reshape(m2, n1 * r, tokens)  # (m2, (n1, r), N)
        return interleave_blocks(torch.bmm(z.mT, self.C2), bias)  # (m2, N, m1) -> row i1 m2 + i2

    def to_dense(self) -> torch.Tensor:
        n1, _, m2, _, r = self._sizes()
        c1 = self.C1.unflatten(-1, (m2, r))
        c2 = self.C2.unflatten(-2, (n1, r))
        dense = torch.einsum("...bjai,...jkba->...ibjk", c2, c1)
        return dense.reshape(*self.C1.shape[:-3], self.out_features, self.in_features)

    @torch.no_grad()
    def scale_input_(self, d: torch.Tensor) -> None:
        n1, n2 = self.in_blocks, self.in_features // self.in_blocks
        self.C1.mul_(d.unflatten(-1, (n1, n2, 1)))  # core 1 reads input (j1, j2) in row j2 of block j1

    @property
    def hparams(self) -> dict[str, Any]:
        return {"in_blocks": self.in_blocks, "out_blocks": self.out_blocks, "rank": self.rank}

    @classmethod
    def weight_params(cls, out_features: int, in_features: int, in_blocks: int, out_blocks: int, rank: int) -> int:
        n1, n2, m2, m1 = in_blocks, in_features // in_blocks, out_blocks, out_features // out_blocks
        return rank * n1 * m2 * (n2 + m1)

    @classmethod
    def _hparams_for(cls, out_features: int, in_features: int, rho: float) -> dict[str, Any]:
        """Over every factorisation, the largest rank within budget; of those the structure
        keeping the most parameters, ties going to the most balanced cores (``n1 ~ n2``,
        ``m1 ~ m2``, what the paper uses)."""
        budget = rho * out_features * in_features
        best: tuple[tuple[float, float], dict[str, Any]] | None = None
        for n1 in divisors(in_features):
            for m2 in divisors(out_features):
                n2, m1 = in_features // n1, out_features // m2
                per_rank = n1 * m2 * (n2 + m1)
                rank = min(int(budget // per_rank), m1, n2)
                if rank < 1:
                    continue
                balance = abs(math.log(n1 / n2)) + abs(math.log(m1 / m2))
                score = (rank * per_rank, -balance)
                if best is None or score > best[0]:
                    best = (score, {"in_blocks": n1, "out_blocks": m2, "rank": rank})
        if best is None:
            raise NotApplicable(f"btt: no factorisation keeps rho <= {rho} for shape {out_features}x{in_features}")
        return best[1]

    @classmethod
    def _hparams_at_rank(cls, out_features: int, in_features: int, rank: int) -> dict[str, Any]:
        """Balanced cores (``n1 ~ n2``, ``m1 ~ m2``, the paper's choice): ``r n1 m2 (n2 + m1)``
        parameters, ``2 r n^1.5`` on a square ``n = s^2``."""
        return {"in_blocks": balanced_split(in_features), "out_blocks": balanced_split(out_features), "rank": rank}

    def _project(self, weight: torch.Tensor) -> None:
        n1, n2, m2, m1, r = self._sizes()
        slices = permute_last(weight.unflatten(-1, (n1, n2)).unflatten(-3, (m1, m2)), 1, 2, 0, 3)  # (i2, j1, i1, j2)
        u, v = svd_factors(slices, r)  # (m2, n1, m1, r), (m2, n1, r, n2)
        self.C2.copy_(permute_last(u, 0, 1, 3, 2).flatten(-3, -2))  # C2[i2, (j1, a), i1]
        self.C1.copy_(permute_last(v, 1, 3, 0, 2).flatten(-2))  # C1[j1, j2, (i2, a)]
