"""MACs via fvcore (which counts one fused multiply-add as one "flop").

fvcore counts matrix products exactly but skips elementwise ops; the handles below add
the fused multiply-adds that forwards here rely on (BLAST's coupling is ``addcmul_``), so
the measured count and each family's analytic ``macs()`` describe the same work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape


def _elementwise_fma(inputs: list[Any], outputs: list[Any]) -> int:
    """One multiply-add per output element (``addcmul``: ``out = a + t1 * t2``)."""
    return math.prod(get_shape(outputs[0]))


MAC_HANDLES = {"aten::addcmul": _elementwise_fma, "aten::addcmul_": _elementwise_fma}


@dataclass
class MacCount:
    total: int
    unsupported_ops: dict[str, int]


def fvcore_macs(module: torch.nn.Module, *inputs: torch.Tensor) -> MacCount:
    counter = FlopCountAnalysis(module, inputs if len(inputs) > 1 else inputs[0])
    counter.set_op_handle(**MAC_HANDLES)
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    total = int(counter.total())
    return MacCount(total, dict(counter.unsupported_ops()))
