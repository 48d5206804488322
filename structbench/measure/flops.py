"""MACs via fvcore (which counts one fused multiply-add as one "flop").

fvcore counts matrix products exactly but skips elementwise ops and some fused products. The
shared block product (``structbench.linalg.block_matmul``, a ``baddbmm`` with the bias fused)
is handled here; a family whose forward uses another such op declares its handle in its own
module (``mac_handles``, e.g. BLAST's ``addcmul_`` coupling), and every module in the counted
tree contributes its handles, so the measured count and each family's analytic ``macs()``
describe the same work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape


def elementwise_fma(inputs: list[Any], outputs: list[Any]) -> int:
    """One multiply-add per output element (e.g. ``addcmul``: ``out = a + t1 * t2``)."""
    return math.prod(get_shape(outputs[0]))


def _baddbmm(inputs: list[Any], outputs: list[Any]) -> int:
    """``beta * input + batch1 @ batch2``: the batched product's MACs, as fvcore counts ``bmm``."""
    batch, rows, inner = get_shape(inputs[1])
    return batch * rows * inner * get_shape(inputs[2])[-1]


MAC_HANDLES = {"aten::baddbmm": _baddbmm}


def mac_handles(module: torch.nn.Module) -> dict[str, Any]:
    """The shared handles and those every module in ``module``'s tree declares."""
    handles = dict(MAC_HANDLES)
    for sub in module.modules():
        handles.update(getattr(sub, "mac_handles", {}))
    return handles


@dataclass
class MacCount:
    total: int
    unsupported_ops: dict[str, int]


def fvcore_macs(module: torch.nn.Module, *inputs: torch.Tensor) -> MacCount:
    counter = FlopCountAnalysis(module, inputs if len(inputs) > 1 else inputs[0])
    counter.set_op_handle(**mac_handles(module))
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    total = int(counter.total())
    return MacCount(total, dict(counter.unsupported_ops()))
