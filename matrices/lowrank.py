"""Low-rank ``W = U V``: the classic compression baseline, projected by truncated SVD."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from structbench import calibrated
from structbench.errors import NotApplicable, StructbenchError
from structbench.linalg import svd_factors
from structbench.initialization import unit_gain_
from structbench.registry import register_family
from structbench.structured import StructuredLinear, check_positive_int


@register_family("lowrank")
class LowRankLinear(StructuredLinear):
    output_factors = ("U",)
    plot_order = 10
    plot_color = "#ef553b"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rank: int) -> None:
        super().__init__(in_features, out_features, bias)
        self.rank = check_positive_int("rank", rank, self.family)
        if rank > min(in_features, out_features):
            raise StructbenchError(
                f"lowrank: rank {rank} exceeds min(out, in) = {min(in_features, out_features)} "
                f"for shape {out_features}x{in_features}"
            )
        self.U = nn.Parameter(torch.empty(out_features, rank))
        self.V = nn.Parameter(torch.empty(rank, in_features))
        # Unit gain per factor (structbench.initialization): x V^T sums n inputs, then U sums r.
        unit_gain_(self.V, fan_in=in_features)
        unit_gain_(self.U, fan_in=rank)

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(F.linear(x, self.V), self.U, bias)

    def to_dense(self) -> torch.Tensor:
        return self.U @ self.V

    @torch.no_grad()
    def scale_input_(self, d: torch.Tensor) -> None:
        self.V.mul_(d.unsqueeze(-2))

    @property
    def hparams(self) -> dict[str, Any]:
        return {"rank": self.rank}

    @classmethod
    def weight_params(cls, out_features: int, in_features: int, rank: int) -> int:
        return rank * (out_features + in_features)

    @classmethod
    def _hparams_for(cls, out_features: int, in_features: int, rho: float) -> dict[str, Any]:
        rank = min(int(rho * out_features * in_features // (out_features + in_features)), min(out_features, in_features))
        if rank < 1:
            raise NotApplicable(
                f"lowrank: rho={rho} leaves no rank-1 factor for shape {out_features}x{in_features}"
            )
        return {"rank": rank}

    def _project(self, weight: torch.Tensor) -> None:
        u, v = svd_factors(weight, self.rank)
        self.U.copy_(u)
        self.V.copy_(v)

    def _project_calibrated(self, weight: torch.Tensor, gram: torch.Tensor, *, damp: float = calibrated.DAMP,
                            refine_steps: int = calibrated.REFINE_STEPS, refine_lr: float = calibrated.REFINE_LR,
                            refine_tol: float = calibrated.TOL) -> None:
        """Whitened SVD (SVD-LLM), optimal in closed form: with ``S S^T = G`` (damped),
        ``W S = U Sigma V^T`` and ``What = U_r Sigma_r V_r^T S^{-1}``; the weighted loss is the
        sum of the dropped ``sigma^2``. ``S`` comes from an eigendecomposition, so a singular
        Gram cannot fail the way its Cholesky does (``structbench.calibrated.whitening``). The
        optimum needs no refinement: the refine options are checked and otherwise unused."""
        calibrated.check_refine(refine_steps, refine_lr, refine_tol, self.family)
        white = calibrated.whitening(gram, damp)
        u, v = svd_factors(weight.to(torch.float64) @ white.root, self.rank)
        self.U.copy_(u)
        self.V.copy_(v @ white.root_inv)
