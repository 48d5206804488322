"""MACs via fvcore (which counts one fused multiply-add as one "flop").

fvcore counts matrix products exactly but skips elementwise ops; the handles below add
the fused multiply-adds that forwards here rely on (BLAST's coupling is ``addcmul_``; block
products with a fused bias are ``baddbmm``), so
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


def _baddbmm(inputs: list[Any], outputs: list[Any]) -> int:
    """``beta * input + batch1 @ batch2``: the batched product's MACs, as fvcore counts ``bmm``."""
    batch, rows, inner = get_shape(inputs[1])
    return batch * rows * inner * get_shape(inputs[2])[-1]


MAC_HANDLES = {"aten::addcmul": _elementwise_fma, "aten::addcmul_": _elementwise_fma, "aten::baddbmm": _baddbmm}


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
