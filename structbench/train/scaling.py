"""Structure-aware training: each factor's Adam learning rate set by its own fan-in, and
residual outputs that start at zero.

A recipe tuned for a dense layer is the wrong recipe for a structured one. Adam moves every
entry of a factor by about the learning rate per step, whatever its gradient's scale, so a
factor whose outputs each sum ``k`` terms changes them by about ``lr * k``: the
maximal-update rule (muP; Yang et al.; for structured matrices Qiu et al., *Compute Better
Spent*, ICML 2024) therefore gives a factor of fan-in ``k`` the learning rate ``lr * k0 / k``,
where ``k0`` is the fan-in at which ``lr`` was tuned. Here ``k0`` is the dense fan-in of the
same layer in the model at the ladder's base width, so that

- a dense layer at width ``d`` gets ``lr * d0 / d`` (muP's width scaling: the base width's
  tuned rate transfers), and
- a structured factor, whose fan-in is far below its layer's (a BTT core sums ``sqrt(n)``
  inputs, not ``n``), gets the larger rate that moves its outputs as much as the dense
  layer's would (the paper's per-factor multiplier).

Initialisation is already the matching rule: every factor starts at unit gain for its own
fan-in (``structbench.initialization``), which is also where the fan-ins read here come from
(``parameter.fan_in``). Parameters outside the replaced layers (embeddings, norms, the head,
biases) keep the recipe's rate. The derivation and its checks are in
``docs/suites/train-scaling.md``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from structbench.structured import StructuredLinear
from structbench.swap import linear_targets


@dataclass(frozen=True)
class Scaling:
    """What a training run does beyond the shared recipe (both off: the recipe as it is)."""

    per_factor_lr: bool = False
    """Each replaced layer's factors at ``lr * base fan-in / own fan-in`` (``lr_multipliers``)."""
    zero_residual: bool = False
    """The replaced layers that write into a residual stream start with a zero weight."""

    @property
    def name(self) -> str:
        return "structure-aware" if self.per_factor_lr else "standard"


STANDARD = Scaling()
STRUCTURE_AWARE = Scaling(per_factor_lr=True, zero_residual=True)
SCALINGS = {s.name: s for s in (STANDARD, STRUCTURE_AWARE)}


def dense_fan_ins(model: nn.Module, include: str) -> dict[str, int]:
    """Layer name -> the fan-in of its dense linear, for the linears ``include`` matches in a
    model not yet structured (the base-width model, built on the ``meta`` device)."""
    return {name: layer.in_features for name, layer in linear_targets(model, include).items()}


def lr_multipliers(model: nn.Module, base_fan_ins: Mapping[str, int]) -> dict[nn.Parameter, float]:
    """Every weight factor of the structured layers named in ``base_fan_ins`` -> its learning-rate
    multiplier ``base fan-in / own fan-in`` (the factor's ``fan_in``, recorded where the family
    drew it). A factor that records none (a learned band width, a location) is left out and
    keeps the recipe's rate, as is everything outside those layers."""
    found: dict[nn.Parameter, float] = {}
    for name, base in base_fan_ins.items():
        layer = model.get_submodule(name)
        if not isinstance(layer, StructuredLinear):
            raise TypeError(f"lr_multipliers: {name} is a {type(layer).__name__}, not a structured layer")
        for param in layer.parameters(recurse=False):
            fan_in = getattr(param, "fan_in", None)
            if fan_in is not None and param is not layer.bias:
                found[param] = base / fan_in
    return found


@torch.no_grad()
def zero_outputs_(model: nn.Module, pattern: str) -> list[str]:
    """Zero the output factors (``StructuredLinear.output_factors``) and bias of every
    structured layer whose name matches ``pattern``, so the block adds nothing to the residual
    stream at the start while each layer's other factors still get a gradient; the names
    zeroed, in model order."""
    match = re.compile(pattern)
    zeroed = []
    for name, layer in model.named_modules():
        if isinstance(layer, StructuredLinear) and match.search(name):
            for factor in layer.output_factors:
                getattr(layer, factor).zero_()
            if layer.bias is not None:
                layer.bias.zero_()
            zeroed.append(name)
    return zeroed
