"""How much memory this machine has, for config checks that refuse a size no case could
allocate here: one ``error:`` line before any run folder exists, instead of an error row
(and a traceback) for every case.

The checks compare a lower bound of what one case allocates with the largest memory a case
can use here (physical RAM, or the largest GPU's when that is more), so they only refuse
what cannot run on any ``--device`` and ``--dtype``; a size that fits the bound may still
run out of memory on a smaller device, and is then that case's error row.
"""
from __future__ import annotations

import functools
import os

import torch

from structbench.errors import StructbenchError

UNITS = ("GiB", "TiB", "PiB", "EiB")


def amount(nbytes: float) -> str:
    value, unit = nbytes / 2**30, UNITS[0]
    for bigger in UNITS[1:]:
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:,.1f} {unit}"


@functools.cache
def physical_memory() -> int | None:
    """Bytes of RAM (None where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


@functools.cache
def largest_gpu_memory() -> int:
    """Bytes of the largest CUDA GPU here, 0 without one. Asked only when RAM is not enough,
    so that checking a config does not start CUDA."""
    if not torch.cuda.is_available():
        return 0
    return max(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))


def check_fits(where: str, needed: int, what: str) -> None:
    """Refuse ``needed`` bytes (a lower bound of one case's allocations, ``what`` saying of
    what) when neither the RAM nor any GPU here holds that much."""
    ram = physical_memory()
    if ram is None or needed <= ram:
        return
    gpu = largest_gpu_memory()
    if needed <= gpu:
        return
    has = f"{amount(ram)} of RAM" + (f", {amount(gpu)} on its largest GPU" if gpu else "")
    raise StructbenchError(f"{where} needs at least {amount(needed)} ({what}), more than this machine has "
                           f"({has}); give smaller sizes")
