"""Peak memory of one call: CUDA allocator statistics, or the Linux high-water mark on CPU.

``tracemalloc`` does not see torch's allocations; on CPU the process's resident-set
high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs``, does. Alone it
reads 0 for a warmed-up forward, because glibc's malloc serves the call from free heap
pages it already holds; ``malloc_trim(0)`` first hands those pages back to the kernel, so
that every page the call touches is counted again.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path
from typing import Callable

import torch


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on other C libraries (where the peak then omits
    memory the allocator already holds)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None


def cpu_peak_bytes(fn: Callable[[], object]) -> int | None:
    """Growth of the resident-set high-water mark during ``fn()``, to page granularity;
    None where Linux's ``/proc`` interface is unavailable."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    base = _status_kb("VmRSS")
    fn()
    peak = _status_kb("VmHWM")
    if base is None or peak is None:
        return None
    return max(0, peak - base) * 1024


def cuda_peak_bytes(fn: Callable[[], object], device: str) -> int:
    """Peak allocated bytes above what was allocated before ``fn()``."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def peak_bytes(fn: Callable[[], object], device: str) -> int | None:
    return cuda_peak_bytes(fn, device) if device.startswith("cuda") else cpu_peak_bytes(fn)


def module_bytes(module: torch.nn.Module) -> int:
    """Exact bytes of a module's parameters."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
