"""Peak memory of one call (CUDA allocator statistics, or the Linux high-water mark on CPU),
and the glibc heap setting CPU timings run under.

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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# glibc's mallopt parameters (mallopt(3)), and what held_heap leaves behind: mmap enabled
# again, with the largest thresholds glibc's own adaptation reaches on 64-bit (blocks above
# 32 MiB mapped, a free heap top above 64 MiB trimmed).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
RELEASED = {M_MMAP_MAX: 65536, M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}


@functools.cache
def _glibc(symbol: str) -> Any | None:
    """A glibc function (``malloc_trim``, ``mallopt``), or None on other C libraries."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), symbol) if name else None
    except (OSError, AttributeError):
        return None


def _trim_heap() -> None:
    """Hand glibc's free heap pages back to the kernel (``malloc_trim(0)``); nothing elsewhere."""
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)


@contextmanager
def held_heap() -> Iterator[bool]:
    """Inside the block, glibc serves every allocation from its heap and keeps the pages
    it frees; yields whether that applied (glibc only).

    By default glibc maps large blocks afresh and hands freed heap tops back to the kernel,
    with thresholds it adapts to the process's history, so whether a forward's intermediates
    reuse resident pages or fault in new ones on every call differs from one process to the
    next. Measured here (BLAST 1024x1024, rho 0.5, 128 tokens, 1 thread, 8 processes): 473
    page faults per call in five of them, efficiency 0.47-0.57; none in the other three,
    0.84-0.90; held, none in eight more (0.80-0.88). Caching allocators keep freed memory
    the same way: CUDA's, and TCMalloc, which Intel's PyTorch CPU launcher (``ipexrun``)
    preloads by default.
    Leaving the block sets the thresholds ``RELEASED`` names (any mallopt call turns glibc's
    adaptation off for the rest of the process) and trims the heap."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        yield False
        return
    try:
        yield bool(mallopt(M_MMAP_MAX, 0)) & bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    finally:
        for param, value in RELEASED.items():
            mallopt(param, value)
        _trim_heap()


def cpu_peak_bytes(fn: Callable[[], object]) -> int | None:
    """Growth of the resident-set high-water mark during ``fn()``, to page granularity;
    None where Linux's ``/proc`` interface is unavailable."""
    _trim_heap()  # elsewhere than glibc the peak then omits memory the allocator holds
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
