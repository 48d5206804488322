from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from structbench.errors import StructbenchError
from structbench.families import get_family, list_families
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


FAST = {"blast": {"steps": 30}, "gaudi": {"steps": 30, "polish": 10}}
"""Shorter budgets for the two slowest iterative fits: the comparison needs equal work, not a long one."""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("calibrated", [False, True], ids=["frobenius", "calibrated"])
@pytest.mark.parametrize("family", list_families())
def test_batched_swap_equals_one_layer_at_a_time(family: str, calibrated: bool) -> None:
    """Three blocks' same-shape layers are fitted as stacks (one batched projection each); each
    layer's fit is as good as the one it gets alone (the same objective to 0.1 %; a non-convex
    fit may land on other factors of equal quality), and the very same matrix where the
    family's Frobenius projection is exact."""
    torch.manual_seed(0)
    model = nn.Sequential(Block(), Block(), Block())
    grams = None
    if calibrated:
        grams = {}
        for name, layer in model.named_modules():
            if isinstance(layer, nn.Linear):
                x = torch.randn(256, layer.in_features) * torch.linspace(0.1, 3.0, layer.in_features)
                grams[name] = (x.T @ x / 256).double()
    options = FAST.get(family, {})
    batched = copy.deepcopy(model)
    swap_linears(batched, family, 0.5, grams=grams, calibrated=calibrated, **options)
    exact = get_family(family).promises.exact_projection and not calibrated
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, nn.Linear):
            continue
        alone = copy.deepcopy(model)
        swap_linears(alone, family, 0.5, include=f"^{re.escape(name)}$", grams=None if grams is None else
                     {name: grams[name]}, calibrated=calibrated, **options)
        mine, theirs = batched.get_submodule(name), alone.get_submodule(name)
        assert mine.projection_report.objective == pytest.approx(theirs.projection_report.objective, rel=1e-3, abs=1e-6)
        if exact:
            with torch.no_grad():
                gap = torch.linalg.norm(mine.to_dense() - theirs.to_dense()) / torch.linalg.norm(theirs.to_dense())
            assert gap < 1e-5, f"{family} {name}: the batched fit differs by {gap:.2e}"
