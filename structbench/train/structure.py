"""Give a model structured block linears, and count what the whole model then costs."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

from structbench.measure.flops import mac_handles
from structbench.structured import StructuredLinear
from structbench.families import get_family
from structbench.swap import Budget, budget, linear_targets, swap_linears


@dataclass
class Structure:
    """What ``structure_`` did: the layers swapped, what they cost against dense, and the
    hyperparameters chosen per layer."""

    layers: int
    budget: Budget
    hparams: dict[str, dict[str, Any]]


def structure_(model: nn.Module, family: str, rho: float, include: str, *, rank: int | None = None) -> Structure:
    """Replace the linears matching ``include`` by ``family`` at ``rho`` (with ``rank``: the
    family's balanced structure of that rank, ``StructuredLinear.hparams_at_rank``), each with
    the family's own from-scratch initialisation (no projection: nothing is pretrained)."""
    hparams = None
    if rank is not None:
        cls = get_family(family)
        hparams = {name: cls.hparams_at_rank(layer.out_features, layer.in_features, rank)
                   for name, layer in linear_targets(model, include).items()}
    records = swap_linears(model, family, rho, include=include, hparams=hparams, project=False, measure_error=False)
    return Structure(len(records), structured_budget(model), {r.name: r.hparams for r in records})


def structured_budget(model: nn.Module) -> Budget:
    """The structured linears' ``Budget`` as the model now stands (Gaudi's depends on its
    current widths)."""
    return budget([m for m in model.modules() if isinstance(m, StructuredLinear)])


def _attention_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """``scaled_dot_product_attention``: ``Q K^T`` and ``A V``, ``B H Tq Tk (d + d_v)`` MACs.
    A causal mask is counted as the full square, what a dense kernel computes."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def model_macs(model: nn.Module, example: torch.Tensor) -> int:
    """fvcore's multiply-add count of one forward of ``example`` through the whole model in
    eval mode (the structure as evaluated: Gaudi's band forward), attention included, with the
    fused multiply-adds the families' forwards use (``structbench.measure.flops``)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            counter = FlopCountAnalysis(model, example)
            counter.set_op_handle(**mac_handles(model), **{"aten::scaled_dot_product_attention": _attention_macs})
            counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return int(counter.total())
    finally:
        model.train(was_training)
