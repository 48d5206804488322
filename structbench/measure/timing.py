"""Latency: interleaved ``torch.utils.benchmark`` timing, CUDA events and CUDA graphs.

Candidates are measured in rounds (A B A B ...) so that drift in clock speed or load
hits them alike; the ratio of medians is what a speedup is made of.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils import benchmark


@dataclass
class Timing:
    """Per-call seconds: raw samples kept so that comparisons can test for noise later."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def runs(self) -> int:
        return len(self.samples)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    threads: int,
    min_run_time: float,
    rounds: int = 5,
    warmup: int = 3,
) -> dict[str, Timing]:
    """Time each callable with ``Timer.blocked_autorange`` in ``rounds`` alternating blocks.

    ``num_threads`` is passed explicitly (Timer's default is 1). Timer synchronises CUDA
    around each block itself.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
            samples[name].extend(timer.blocked_autorange(min_run_time=min_run_time / rounds).times)
    return {name: Timing(s) for name, s in samples.items()}


def cuda_event_times(fn: Callable[[], object], iters: int = 50, warmup: int = 5) -> Timing:
    """Per-call GPU time between CUDA events recorded on the current stream."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return Timing([s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)])


def cuda_graph_times(fn: Callable[[], object], calls_per_graph: int = 10, iters: int = 20) -> Timing:
    """Per-call time of ``fn`` replayed from a CUDA graph holding ``calls_per_graph`` calls,
    which removes launch overhead. Captured on a side stream, as graph capture requires."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up allocator and kernels outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for _ in range(calls_per_graph):
            fn()
    timing = cuda_event_times(graph.replay, iters=iters, warmup=2)
    return Timing([t / calls_per_graph for t in timing.samples])
