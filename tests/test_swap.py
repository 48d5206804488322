from __future__ import annotations

import pytest
import torch
from torch import nn

from structbench.errors import StructbenchError
from structbench.structured import StructuredLinear
from structbench.swap import swap_linears


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(32, 32)
        self.up_proj = nn.Linear(32, 64, bias=False)
        self.down_proj = nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.relu(self.up_proj(self.q_proj(x))))


def test_swaps_matching_layers_only_and_keeps_function_when_exact() -> None:
    model = nn.Sequential(Block(), Block()).double()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    before = model(x)
    records = swap_linears(model, "dense", 1.0, include=r"(up|down)_proj")
    assert [r.name for r in records] == ["0.up_proj", "0.down_proj", "1.up_proj", "1.down_proj"]
    assert isinstance(model[0].up_proj, StructuredLinear) and isinstance(model[0].q_proj, nn.Linear)
    assert not isinstance(model[0].q_proj, StructuredLinear)
    torch.testing.assert_close(model(x), before)
    assert all(r.rel_error == 0 for r in records)


def test_lowrank_swap_reports_rho_and_error() -> None:
    model = Block().double()
    records = swap_linears(model, "lowrank", 0.25, include=lambda name, layer: name == "up_proj")
    (rec,) = records
    assert rec.rho_actual <= 0.25 and 0 < rec.rel_error < 1
    assert model.up_proj.bias is None


def test_no_match_is_an_error() -> None:
    with pytest.raises(StructbenchError, match="no nn.Linear"):
        swap_linears(Block(), "lowrank", 0.5, include="nothing_here")
