"""MACs via fvcore (which counts one fused multiply-add as one "flop")."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from fvcore.nn import FlopCountAnalysis


@dataclass
class MacCount:
    total: int
    unsupported_ops: dict[str, int]


def fvcore_macs(module: torch.nn.Module, *inputs: torch.Tensor) -> MacCount:
    counter = FlopCountAnalysis(module, inputs if len(inputs) > 1 else inputs[0])
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    total = int(counter.total())
    return MacCount(total, dict(counter.unsupported_ops()))
