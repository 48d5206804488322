"""The measuring primitives: statistics of timings, interleaving, peak memory, bytes, MACs."""
from __future__ import annotations

import os
import resource
import time

import pytest
import torch

from structbench.measure.flops import fvcore_macs
from structbench.measure.memory import cpu_peak_bytes, held_heap, module_bytes, peak_bytes
from structbench.measure.ops import op_seconds, product_share
from structbench.measure import timing
from structbench.measure.timing import Timing, calls_per_block, interleaved
from structbench.families import build, hparams_for

MB = 1 << 20
linux_peak = pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                                reason="needs Linux's /proc/self/clear_refs to reset the RSS high-water mark")


def test_timing_statistics_on_known_samples() -> None:
    t = Timing([8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 4.0])
    assert t.median == 4.5
    # inclusive quartiles of 1..8 sit at positions 1 + 7/4 and 1 + 21/4
    assert t.quartiles == (2.75, 6.25)
    assert t.iqr == 3.5
    assert t.runs == 8
    assert Timing([3.0]).iqr == 0.0 and Timing([3.0]).quartiles == (3.0, 3.0)


def test_interleaved_alternates_blocks_and_keeps_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    fns = {"a": lambda: None, "b": lambda: None}
    names = {id(fn): name for name, fn in fns.items()}
    blocks: list[tuple[str, int, int]] = []

    def fake_block(fn, number, device="cpu"):
        blocks.append((names[id(fn)], number, torch.get_num_threads()))
        return {"a": 1.0, "b": 2.0}[names[id(fn)]]

    monkeypatch.setattr(timing, "block_seconds", fake_block)
    monkeypatch.setattr(timing, "calls_per_block", lambda fn, target, device="cpu": 7)
    before = torch.get_num_threads()
    times = interleaved(fns, threads=1, min_run_time=1.0, rounds=6, warmup=0)
    assert [name for name, _, _ in blocks] == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert {number for _, number, _ in blocks} == {7} and {threads for _, _, threads in blocks} == {1}
    assert torch.get_num_threads() == before
    assert times["a"].samples == [1.0] * 6 and times["b"].samples == [2.0] * 6


def test_interleaved_ratio_of_medians_tracks_work() -> None:
    """A callable doing four times the sleeping is about four times slower (a ratio, not an
    absolute time, so that a loaded machine cannot fail it)."""
    times = interleaved({"short": lambda: time.sleep(0.005), "long": lambda: time.sleep(0.02)},
                        threads=1, min_run_time=0.15, rounds=6, warmup=1)
    ratio = times["long"].median / times["short"].median
    assert 2.0 < ratio < 6.0


def test_calls_per_block_reaches_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call of 1 ms: blocks of 1 and 10 calls are too short to judge (under target / 5), 100
    calls are long enough, and a 20 ms block is then 20 calls; a slow call is one per block.
    The clock is faked so the answer does not depend on the machine's load."""
    tried: list[int] = []

    def fake_block(fn: object, number: int, device: str = "cpu") -> float:
        tried.append(number)
        return per_call

    monkeypatch.setattr(timing, "block_seconds", fake_block)
    per_call = 0.001
    assert calls_per_block(lambda: None, target=0.02) == 20 and tried == [1, 10]
    per_call = 0.5
    assert calls_per_block(lambda: None, target=0.02) == 1


@linux_peak
def test_cpu_peak_sees_a_large_allocation() -> None:
    peak = cpu_peak_bytes(lambda: torch.ones(32 * MB // 4).sum())
    assert peak is not None and 30 * MB <= peak <= 48 * MB


@linux_peak
def test_cpu_peak_sees_memory_the_allocator_already_holds() -> None:
    """Warmed up, malloc serves the call from heap pages it kept; trimming them first makes
    the call's pages count again (without it this reads ~0)."""
    def fn() -> float:
        return float(torch.full((MB,), 1.0).sum())  # 4 MiB

    torch.full((4 * MB,), 1.0)  # freeing a 16 MiB mapping raises glibc's mmap threshold above 4 MiB
    for _ in range(3):
        fn()
    # a page or two of the 4 MiB may already be resident; without the trim this reads ~0
    assert cpu_peak_bytes(fn) >= 0.9 * 4 * MB
    assert peak_bytes(fn, "cpu") >= 0.9 * 4 * MB


def test_module_bytes_is_exact() -> None:
    layer = torch.nn.Linear(30, 20).double()
    assert module_bytes(layer) == (30 * 20 + 20) * 8
    assert module_bytes(layer.float()) == (30 * 20 + 20) * 4


@pytest.mark.parametrize("family", ["dense", "lowrank"])
def test_fvcore_macs_wrapper_matches_analytic(family: str) -> None:
    # every family's count is checked in test_families; this checks the wrapper the suite uses
    layer = build(family, 96, 64, **hparams_for(family, 0.5, out_features=64, in_features=96).hparams).eval()
    count = fvcore_macs(layer, torch.randn(5, 96))
    assert count.total == layer.macs(5)
    assert isinstance(count.unsupported_ops, dict)


@pytest.mark.parametrize("family", ["kronecker", "btt"])
def test_the_kernels_suites_count_traces_a_few_tokens_and_scales_exactly(family: str, monkeypatch) -> None:  # noqa: ANN001
    from suites.kernels import suite

    traced = []
    monkeypatch.setattr(suite, "fvcore_macs", lambda m, x: traced.append(x.shape[0]) or fvcore_macs(m, x))
    layer = build(family, 96, 64, **hparams_for(family, 0.5, out_features=64, in_features=96).hparams).eval()
    tokens = 3 * suite.COUNT_TOKENS + 5
    count = suite._fvcore_macs(layer, torch.randn(tokens, 96))
    assert traced == [suite.COUNT_TOKENS] and count.total == layer.macs(tokens) == fvcore_macs(layer, torch.randn(tokens, 96)).total


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_timers_and_peak() -> None:
    from structbench.measure.memory import cuda_peak_bytes
    from structbench.measure.timing import cuda_event_times, cuda_graph_times, l2_flush_buffer

    a, b = torch.randn(512, 512, device="cuda"), torch.randn(2048, 2048, device="cuda")
    fns = {"small": lambda: a @ a, "large": lambda: b @ b}
    for times in (cuda_event_times(fns, iters=20), cuda_event_times(fns, iters=20, flush=l2_flush_buffer("cuda")),
                  cuda_graph_times(fns, calls_per_graph=5, iters=10)):
        assert times["large"].median > times["small"].median > 0
    assert cuda_peak_bytes(lambda: b @ b, "cuda") >= 2048 * 2048 * 4


def _faults_of_fresh_blocks(nbytes: int, times: int = 3) -> list[int]:
    """Minor page faults of allocating, touching and freeing ``nbytes`` ``times`` times."""
    faults = []
    for _ in range(times):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(nbytes, dtype=torch.uint8).fill_(1)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults


def test_held_heap_reuses_freed_pages_and_lets_go_after() -> None:
    """Held, later 64 MiB blocks reuse the heap's pages (the first few may land on free
    chunks an earlier ``malloc_trim`` released, and fault those in once); leaving the block
    trims the heap, so the next block faults its pages in again."""
    pages = 64 * MB // 4096
    with held_heap() as held:
        inside = _faults_of_fresh_blocks(64 * MB, times=8)
    if not held:
        pytest.skip("not glibc: no mallopt to hold the heap with")
    assert inside[0] > pages // 2 and max(inside[-2:]) < pages // 10, inside
    assert _faults_of_fresh_blocks(64 * MB, times=1)[0] > pages // 2  # the held pages were handed back



def test_product_share_tells_products_from_copies() -> None:
    """Composite ops are seen as what they decompose into, even for tensors made under
    inference mode: ``a @ b`` is all product, a transpose copy none, and a forward of both
    lies between; op names come through as aten's."""
    with torch.inference_mode():
        a, b = torch.randn(256, 256), torch.randn(256, 256)
        assert product_share(lambda: a @ b) == 1.0
        assert product_share(lambda: a.t().contiguous()) == 0.0
        assert product_share(lambda: None) is None
        mixed = op_seconds(lambda: torch.matmul(a.t().contiguous(), b).reshape(-1))
        assert "mm" in mixed and "matmul" not in mixed and {"contiguous", "clone", "copy_"} & set(mixed)
        assert 0.0 < product_share(lambda: (a @ b).t().contiguous()) < 1.0
    with pytest.raises(ValueError, match="calls"):
        product_share(lambda: a @ b, calls=0)
