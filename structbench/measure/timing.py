"""Latency: interleaved CPU timing, CUDA events, CUDA graphs and a cold-L2 mode.

Candidates are measured in alternating blocks (A B B A A B ...) so that drift in clock
speed or load from other processes hits them alike; the ratio of medians is what a
speedup is made of. Raw per-block seconds are kept so that ``compare`` can test later
whether two runs differ by more than noise.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from structbench.stats import quartiles


@dataclass
class Timing:
    """Per-call seconds, one sample per timed block (or per event pair on CUDA)."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def quartiles(self) -> tuple[float, float]:
        """First and third quartiles (both the sample itself when there is one)."""
        return quartiles(self.samples)

    @property
    def iqr(self) -> float:
        q1, q3 = self.quartiles
        return q3 - q1

    @property
    def runs(self) -> int:
        return len(self.samples)

    def stored(self) -> list[float]:
        """The samples as a run stores them: to ``STORED_DIGITS`` significant digits."""
        return [float(f"{s:.{STORED_DIGITS}g}") for s in self.samples]


STORED_DIGITS = 4
"""Significant digits of the per-block seconds a run stores: a block's time varies by more than
1 % between blocks on a CPU, so digits past the fourth (at most 0.05 % of the value) are noise
that only costs file size; medians and intervals are computed from the full samples first."""


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with exactly ``threads`` intra-op threads and restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def block_seconds(fn: Callable[[], object], number: int, device: str = "cpu") -> float:
    """Mean seconds per call of ``number`` back-to-back calls (the loop ``timeit`` runs)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(number):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / number


def calls_per_block(fn: Callable[[], object], target: float, device: str = "cpu", max_calls: int = 10**6) -> int:
    """How many calls make one block last about ``target`` seconds (at least one call)."""
    number = 1
    while True:
        per_call = block_seconds(fn, number, device)
        if per_call * number >= target / 5 or number >= max_calls:
            return max(1, min(max_calls, round(target / per_call)))
        number *= 10


def interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    threads: int,
    min_run_time: float,
    rounds: int = 10,
    warmup: int = 3,
    device: str = "cpu",
    until: Callable[[dict[str, list[float]]], bool] | None = None,
    max_seconds: float = 0.0,
) -> dict[str, Timing]:
    """Time every callable in ``rounds`` rounds of one block each, alternating the order
    every round, each block lasting about ``min_run_time / rounds`` (at least one call).

    With ``until``, more rounds follow, two at a time (one in each order, so neither candidate
    always goes first), until ``until(samples)`` is true or ``max_seconds`` of timing have
    passed: the measurement stops when it is precise enough, not after a fixed count.

    The block size is calibrated once per candidate, unlike ``Timer.blocked_autorange``,
    which re-estimates it on every call and so makes fine-grained interleaving costly.
    ``threads`` is set explicitly for the measurement and restored afterwards.
    """
    order = list(fns)
    with torch_threads(threads):
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        target = min_run_time / rounds
        numbers = {name: calls_per_block(fn, target, device) for name, fn in fns.items()}
        samples: dict[str, list[float]] = {name: [] for name in fns}
        start, r = time.perf_counter(), 0
        while r < rounds or (until is not None and not until(samples) and time.perf_counter() - start < max_seconds):
            for _ in range(1 if r < rounds else 2):
                for name in order if r % 2 == 0 else order[::-1]:
                    samples[name].append(block_seconds(fns[name], numbers[name], device))
                r += 1
    return {name: Timing(s) for name, s in samples.items()}


def l2_flush_buffer(device: str) -> torch.Tensor:
    """A byte buffer twice the size of the GPU's L2 cache: zeroing it evicts the L2."""
    size = torch.cuda.get_device_properties(device).L2_cache_size
    return torch.empty(2 * max(size, 1 << 20), dtype=torch.uint8, device=device)


def cuda_event_times(
    fns: dict[str, Callable[[], object]], *, iters: int = 50, warmup: int = 5, flush: torch.Tensor | None = None
) -> dict[str, Timing]:
    """Per-call GPU time between CUDA events recorded on the current stream around each
    call, candidates interleaved call by call. With ``flush`` (see ``l2_flush_buffer``) the
    buffer is zeroed before every call, outside the events, so each call starts cold."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    events = {name: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
              for name in fns}
    torch.cuda.synchronize()
    for i in range(iters):
        for name, fn in fns.items():
            if flush is not None:
                flush.zero_()
            start, end = events[name][i]
            start.record()
            fn()
            end.record()
    torch.cuda.synchronize()
    # elapsed_time is in milliseconds
    return {name: Timing([s.elapsed_time(e) / 1e3 for s, e in pairs]) for name, pairs in events.items()}


def capture_graph(fn: Callable[[], object], calls: int, warmup: int = 3) -> Callable[[], None]:
    """Capture ``calls`` back-to-back calls of ``fn`` in one CUDA graph; returns its replay.

    Warm-up runs on the same side stream that then captures (as the PyTorch CUDA-graph
    docs prescribe: library handles such as cuBLAS's are created per stream, and capture
    must not create them). Inputs must be static tensors, which they are in a benchmark.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for _ in range(calls):
            fn()
    return graph.replay


def cuda_graph_times(fns: dict[str, Callable[[], object]], *, calls_per_graph: int = 10, iters: int = 20) -> dict[str, Timing]:
    """Per-call time of each callable replayed from a graph of ``calls_per_graph`` calls,
    which removes CPU launch overhead; replays of the candidates are interleaved."""
    replays = {name: capture_graph(fn, calls_per_graph) for name, fn in fns.items()}
    times = cuda_event_times(replays, iters=iters, warmup=2)
    return {name: Timing([t / calls_per_graph for t in timing.samples]) for name, timing in times.items()}
