"""Variance-preserving initialisation for training structured layers from scratch.

Every family is a product of factors; a from-scratch layer should start with the output
variance of a dense layer at ``std = 1/sqrt(in_features)`` (unit gain: a unit-variance input
gives a unit-variance output), or deep stacks of structured layers shrink or blow up their
activations depending on the family, and a from-scratch comparison would measure
initialisation instead of structure. The rule, applied factor by factor: a factor whose every
output sums ``fan_in`` unit-variance terms is drawn from ``N(0, share / fan_in)``, so it passes
variance ``share`` on (``share = 1`` for a factor in a chain; a sum of ``k`` parallel parts,
as Pixelfly's sparse plus low-rank, gives each part its ``share``). Each family states its
factors' fan-ins where it builds them; ``tests/test_train.py`` checks the result for every
registered family.

The fan-in each factor was drawn for is kept on it (``parameter.fan_in``, as the ``mup``
package keeps its ``infshape``), so that structure-aware training
(``structbench.train.scaling``) can scale each factor's learning rate by its own fan-in
without every family restating it.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def unit_gain_(tensor: torch.Tensor, fan_in: float | torch.Tensor, share: float = 1.0) -> torch.Tensor:
    """Fill ``tensor`` from ``N(0, share / fan_in)`` in place and return it; a parameter keeps
    ``fan_in`` as its ``fan_in`` attribute (the mean, for a tensor of fan-ins).

    ``fan_in`` may be a tensor broadcasting against ``tensor`` (one fan-in per slice, for
    factors whose slices sum different numbers of terms, such as Gaudi's masked bands).
    """
    if isinstance(tensor, nn.Parameter):
        tensor.fan_in = float(fan_in.float().mean()) if isinstance(fan_in, torch.Tensor) else float(fan_in)
    if isinstance(fan_in, torch.Tensor):
        with torch.no_grad():
            return tensor.normal_().mul_(torch.sqrt(share / fan_in.to(tensor.dtype)))
    return nn.init.normal_(tensor, std=math.sqrt(share / fan_in))
