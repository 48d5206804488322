"""Dense baseline: the ``nn.Linear`` every family is measured against."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from structbench.initialization import unit_gain_
from structbench.registry import register_family
from structbench.structured import StructuredLinear


@register_family("dense")
class DenseLinear(StructuredLinear):
    """The reference every row is compared with; it ignores rho (always keeps everything)."""

    output_factors = ("weight",)
    plot_order = 0
    plot_color = "#636efa"

    compressible = False
    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        unit_gain_(self.weight, fan_in=in_features)

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, self.weight, bias)

    def to_dense(self) -> torch.Tensor:
        return self.weight

    @torch.no_grad()
    def scale_input_(self, d: torch.Tensor) -> None:
        self.weight.mul_(d.unsqueeze(-2))

    @property
    def hparams(self) -> dict[str, Any]:
        return {}

    @classmethod
    def weight_params(cls, out_features: int, in_features: int) -> int:
        return out_features * in_features

    @classmethod
    def _hparams_for(cls, out_features: int, in_features: int, rho: float) -> dict[str, Any]:
        return {}

    def _project(self, weight: torch.Tensor) -> None:
        self.weight.copy_(weight)

    def _project_calibrated(self, weight: torch.Tensor, gram: torch.Tensor, *, damp: float = 0.0) -> None:
        """Nothing to fit: the dense layer is its own best approximation under any weighting."""
        self.weight.copy_(weight)
