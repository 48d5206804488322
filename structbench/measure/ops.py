"""How much of a CPU forward is matrix products: the ceiling of a forward built from BLAS calls.

A structured forward is a few matrix products (``mm``, ``bmm`` and their fused-add forms)
plus layout copies, bias adds and gathers between them. Timing each aten op of a call
separates the two: if the products alone, run at whatever speed the BLAS library reaches
on their shapes, already miss a target, rearranging the copies cannot meet it, and only a
different contraction shape or a fused kernel can. The ops are timed at the dispatcher
(``TorchDispatchMode``) rather than with ``torch.profiler``, which prints to stderr on every
start and stop and wraps each op in its own records.
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

PRODUCT_OPS = frozenset({"mm", "bmm", "addmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "linear", "matmul"})
"""aten ops that are matrix products: what ``matmul`` and ``einsum`` decompose into, and
``linear`` and ``matmul`` themselves where the CPU build dispatches them whole (one GEMM)."""


class _OpSeconds(TorchDispatchMode):
    """Wall seconds spent inside each aten op, summed by op name. CPU ops run synchronously,
    so the clock around the call is the op's own time."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = defaultdict(float)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds[func.overloadpacket.__name__] += time.perf_counter() - start
        return out


def op_seconds(fn: Callable[[], object]) -> dict[str, float]:
    """Seconds per aten op name during one call of ``fn`` (CPU only).

    Run outside inference mode, under ``no_grad``: composite ops such as ``matmul`` and
    ``einsum`` then reach the mode as what they decompose into, so a copy a ``matmul`` makes
    of a strided operand counts as a copy, not as part of the product."""
    with torch.inference_mode(False), torch.no_grad(), _OpSeconds() as mode:
        fn()
    return dict(mode.seconds)


def product_share(fn: Callable[[], object], calls: int = 5) -> float | None:
    """Median over ``calls`` calls of the share of ``fn``'s time in aten ops that is spent in
    matrix products; None when it runs no op. A share of op time, not of the call's wall
    time: the clocks around each op cost a few microseconds that the call's own median
    (taken without them) does not include. ``fn`` should be warm (first-call allocations and
    lazy caches are not the products' cost)."""
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    shares = []
    for _ in range(calls):
        seconds = op_seconds(fn)
        total = sum(seconds.values())
        if total > 0:
            shares.append(sum(s for op, s in seconds.items() if op in PRODUCT_OPS) / total)
    return statistics.median(shares) if shares else None
