"""Block-diagonal ``W``: ``b`` independent ``(m/b) x (n/b)`` blocks, projected by keeping them."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from structbench import calibrated
from structbench.errors import NotApplicable, StructbenchError
from structbench.initialization import unit_gain_
from structbench.linalg import block_matmul, permute_last, solve_right
from structbench.registry import register_family
from structbench.structured import Promises, StructuredLinear, check_positive_int, divisors


@register_family("blockdiag")
class BlockDiagLinear(StructuredLinear):
    output_factors = ("weight",)
    plot_order = 20
    plot_color = "#00cc96"
    synthetic_kind = True
    promises = Promises(rho_margin=0.5)  # 1/b jumps between divisors of gcd(m, n)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, blocks: int) -> None:
        super().__init__(in_features, out_features, bias)
        self.blocks = check_positive_int("blocks", blocks, self.family)
        if in_features % blocks or out_features % blocks:
            raise StructbenchError(
                f"blockdiag: blocks={blocks} must divide both dimensions of shape {out_features}x{in_features}"
            )
        self.weight = nn.Parameter(torch.empty(blocks, out_features // blocks, in_features // blocks))
        unit_gain_(self.weight, fan_in=in_features // blocks)  # each block sums n/b inputs

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        n_tok = x.shape[0]
        xb = x.view(n_tok, self.blocks, -1).transpose(0, 1)  # (b, N, n/b)
        out = block_matmul(xb, self.weight.transpose(1, 2), bias)  # (b, N, m/b)
        return out.transpose(0, 1).reshape(n_tok, self.out_features)

    def to_dense(self) -> torch.Tensor:
        blocks = permute_last(torch.diag_embed(permute_last(self.weight, 1, 2, 0)), 2, 0, 3, 1)  # (..., b, p, b, q)
        return blocks.reshape(*self.weight.shape[:-3], self.out_features, self.in_features)

    @torch.no_grad()
    def scale_input_(self, d: torch.Tensor) -> None:
        self.weight.mul_(d.unflatten(-1, (self.blocks, 1, -1)))

    @property
    def hparams(self) -> dict[str, Any]:
        return {"blocks": self.blocks}

    @classmethod
    def weight_params(cls, out_features: int, in_features: int, blocks: int) -> int:
        return out_features * in_features // blocks

    @classmethod
    def _hparams_for(cls, out_features: int, in_features: int, rho: float) -> dict[str, Any]:
        valid = [b for b in divisors(math.gcd(out_features, in_features)) if b * rho >= 1 - 1e-12]
        if not valid:
            raise NotApplicable(
                f"blockdiag: no block count divides shape {out_features}x{in_features} with rho <= {rho}"
            )
        return {"blocks": valid[0]}

    def _diagonal_tiles(self, w: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """The ``(..., b, rows, cols)`` diagonal tiles of ``(..., b rows, b cols)`` matrices."""
        tiles = w.unflatten(-1, (self.blocks, cols)).unflatten(-3, (self.blocks, rows))  # (..., b, rows, b, cols)
        return permute_last(tiles.diagonal(dim1=-4, dim2=-2), 2, 0, 1)

    def _project(self, weight: torch.Tensor) -> None:
        p, q = self.out_features // self.blocks, self.in_features // self.blocks
        self.weight.copy_(self._diagonal_tiles(weight, p, q))

    def _project_calibrated(self, weight: torch.Tensor, gram: torch.Tensor, *, damp: float = calibrated.DAMP,
                            refine_steps: int = calibrated.REFINE_STEPS, refine_lr: float = calibrated.REFINE_LR,
                            refine_tol: float = calibrated.TOL) -> None:
        """Closed form per block row: only block ``(i, i)`` of row ``i`` is free, and setting the
        weighted loss's gradient ``-2 [(W_i - B_i) G]_{:, blk_i}`` to zero gives
        ``B_ii = (W_i G)_{:, blk_i} G_{blk_i, blk_i}^{-1}`` (``G`` damped, so always solvable).
        The optimum needs no refinement: the refine options are checked and otherwise unused."""
        calibrated.check_refine(refine_steps, refine_lr, refine_tol, self.family)
        p, q = self.out_features // self.blocks, self.in_features // self.blocks
        g = calibrated.whitening(gram, damp).gram
        rhs = self._diagonal_tiles(weight.to(torch.float64) @ g, p, q)  # (..., b, p, q): (W_i G)_{:, blk_i}
        diag = self._diagonal_tiles(g, q, q)  # (..., b, q, q): G_{blk_i, blk_i}, positive definite once damped
        # Cholesky (solve_right), not a batched LU: MKL's batched LU solve returned invalid pivots on
        # SmolLM2's 288x288 Gram blocks (two threads), while the Cholesky path is exact and cheaper.
        self.weight.copy_(solve_right(rhs, diag, 0.0))
