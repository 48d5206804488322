"""Block-diagonal ``W``: ``b`` independent ``(m/b) x (n/b)`` blocks, projected by keeping them."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from structbench.errors import StructbenchError
from structbench.init import unit_gain_
from structbench.linalg import block_matmul
from structbench.registry import register_family
from structbench.structured import StructuredLinear, check_positive_int, divisors


@register_family("blockdiag")
class BlockDiagLinear(StructuredLinear):
    rho_margin = 0.5  # 1/b jumps between divisors of gcd(m, n)

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
        return torch.block_diag(*self.weight.unbind(0))

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
            raise StructbenchError(
                f"blockdiag: no block count divides shape {out_features}x{in_features} with rho <= {rho}"
            )
        return {"blocks": valid[0]}

    def _project(self, weight: torch.Tensor) -> None:
        b, p, q = self.weight.shape
        idx = torch.arange(b, device=weight.device)
        tiles = weight.view(b, p, b, q)[idx, :, idx, :]  # (b, p, q): the diagonal tiles
        self.weight.copy_(tiles)
