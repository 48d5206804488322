"""Suite ``kernels``: is each family's forward as fast as its MAC count promises?

Per case (family, shape, rho, tokens, mode): check the kernel against ``to_dense`` first,
then time it interleaved with the ``nn.Linear`` of the same shape it replaces in the same process,
count MACs with fvcore next to the analytic formula, and record parameter bytes and the
peak memory of one call. ``speedup = dense / family`` (medians), ``ideal = dense MACs /
family MACs``, ``efficiency = speedup / ideal``. On CPU (eager) the share of a call's op time
spent in matrix products gives ``products_efficiency = efficiency / products_share``, the
efficiency of those products alone: the ceiling of any forward made of the same BLAS calls
(``measure.ops``).

Modes are separate rows, never mixed: ``eager`` (CPU: interleaved timed blocks, with glibc
holding its heap so that no process faults its intermediates in afresh on every call; CUDA:
CUDA events around each call), ``cuda-graph`` (calls replayed from a captured graph, no
launch overhead), ``cold-l2`` (CUDA events with the L2 cache flushed before every call),
``compile`` (``torch.compile`` of both the family and the dense baseline) and ``triton``
(CUDA: the family's fused Triton forward, ``use_impl("triton")``, against plain ``nn.Linear``;
families without one are skipped rows).
"""
from __future__ import annotations

import importlib.util
import statistics
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch

from structbench.capacity import check_fits
from structbench.config import check_keys, distinct, number_list, positive_int
from structbench.errors import NotApplicable, StructbenchError
from structbench.measure.flops import MacCount, fvcore_macs
from structbench.measure.memory import held_heap, module_bytes, peak_bytes
from structbench.measure.ops import product_share
from structbench.stats import median_interval
from structbench.measure.timing import Timing, cuda_event_times, cuda_graph_times, interleaved, l2_flush_buffer
from structbench.families import build, get_family, hparams_for, resolve_families
from structbench.structured import StructuredLinear
from structbench.suite import Metric, RunContext, Schema, Suite

CONFIG_PATH = Path(__file__).with_name("default.yaml")
KEYS = {"families", "shapes", "rhos", "tokens", "min_run_time", "rounds", "precision", "max_time", "modes", "hold_heap",
        "quick"}
MODES = ("eager", "cuda-graph", "cold-l2", "compile", "triton")
CUDA_ONLY = ("cuda-graph", "cold-l2", "triton")
TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}
PRECISION = 0.05  # rounds go on until the 95 % interval of the speedup is within +-5 % of it ...
MAX_TIME = 5.0  # ... or this many seconds of timing have passed: then the row is noisy
CONFIDENCE = 0.95
NOISY_SHARE = 1 / 3  # more noisy rows than this share marks the run unreliable
CONTROL = (0.9, 1.1)  # the dense-vs-dense speedup a trustworthy run keeps ...
CONTROL_MIN_S = 1e-3  # ... where nn.Linear takes this long: the module's few-us call overhead is then under 1 %
MACS_TOLERANCE = 0.01  # fvcore's count may differ this much (relative) from the analytic macs()
HOLD_HEAP = True  # CPU timings with glibc keeping freed pages (measure.memory.held_heap)
ROUNDS = 10  # timed blocks per candidate: the rank test in ``compare`` needs at least 6
PROFILE_SECONDS = 0.5  # budget of the per-op clocked calls (``products_share``): a 16 s Kronecker call gets one
COUNT_TOKENS = 16  # fvcore traces at most this many tokens of a case (``_fvcore_macs``)


def validate(config: dict[str, Any], where: str = "kernels") -> dict[str, Any]:
    check_keys(f"{where} config", config, KEYS - {"quick"})
    families = resolve_families(f"{where} config: families", config.get("families", "all"), with_dense=True)
    shapes = config.get("shapes")
    if not isinstance(shapes, dict) or not shapes:
        raise StructbenchError("kernels config: shapes must be a mapping of name -> [out_features, in_features]")
    for name, shape in shapes.items():
        number_list(f"kernels config: shape {name!r}", shape, integer=True, unique=False)
        if len(shape) != 2:
            raise StructbenchError(f"kernels config: shape {name!r} must be [out_features, in_features], got {shape!r}")
    number_list("kernels config: rhos", config.get("rhos"), high=1.0)
    tokens = max(number_list("kernels config: tokens", config.get("tokens"), integer=True))
    for name, (out_f, in_f) in shapes.items():
        check_fits(f"{where} config: shape {name!r} [{out_f}, {in_f}] at tokens {tokens}",
                   2 * (out_f * in_f + tokens * (in_f + out_f)),
                   "the dense weight, input and output at 2 bytes a value, the least any dtype takes")
    min_run_time = number_list("kernels config: min_run_time", [config.get("min_run_time", 1.0)])[0]
    rounds = positive_int("kernels config: rounds", config.get("rounds", ROUNDS))
    precision = number_list("kernels config: precision", [config.get("precision", PRECISION)], high=1.0)[0]
    max_time = number_list("kernels config: max_time", [config.get("max_time", MAX_TIME)])[0]
    modes = config.get("modes", ["eager"])
    if not isinstance(modes, list) or not modes or not set(modes) <= set(MODES):
        raise StructbenchError(f"kernels config: modes must be a non-empty list from {list(MODES)}, got {modes!r}")
    distinct(f"{where} config: modes", modes)
    hold_heap = config.get("hold_heap", HOLD_HEAP)
    if not isinstance(hold_heap, bool):
        raise StructbenchError(f"kernels config: hold_heap must be true or false, got {hold_heap!r}")
    return {**config, "families": families, "min_run_time": min_run_time, "rounds": rounds, "precision": precision,
            "max_time": max_time, "modes": modes, "hold_heap": hold_heap}


def expand(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (shape, tokens, mode) starts with the dense family, the run's noise control
    (``assess``), whether or not ``families`` lists it."""
    families = ["dense", *[f for f in config["families"] if f != "dense"]]
    cases = []
    for shape_name, (out_f, in_f) in config["shapes"].items():
        for tokens in config["tokens"]:
            for mode in config["modes"]:
                for family in families:
                    rhos = config["rhos"] if get_family(family).compressible else [1.0]
                    for rho in rhos:
                        cases.append(
                            {"family": family, "shape": shape_name, "out_features": out_f, "in_features": in_f,
                             "rho": rho, "tokens": tokens, "mode": mode,
                             "min_run_time": config["min_run_time"], "rounds": config["rounds"],
                             "precision": config["precision"], "max_time": config["max_time"]}
                        )
    return cases


class CaseModules(NamedTuple):
    family: StructuredLinear
    dense: torch.nn.Linear  # the layer the family replaces
    x: torch.Tensor  # (tokens, in_features)
    hparams: dict[str, Any]


def case_modules(case: dict[str, Any], device: str, dtype: str, seed: int) -> CaseModules:
    """What one case times, built the same way here and in ``tests/benchmarks``. Raises
    ``NotApplicable`` for a shape the family cannot take (a ``skipped`` row)."""
    out_f, in_f = case["out_features"], case["in_features"]
    fit = hparams_for(case["family"], case["rho"], out_features=out_f, in_features=in_f)
    torch.manual_seed(seed)
    to = {"device": device, "dtype": getattr(torch, dtype)}
    module = build(case["family"], in_f, out_f, bias=True, **fit.hparams).to(**to).eval()
    dense = torch.nn.Linear(in_f, out_f, bias=True).to(**to).eval()
    return CaseModules(module, dense, torch.randn(case["tokens"], in_f, **to), fit.hparams)


def _callables(mode: str, module: torch.nn.Module, dense: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The two callables to time, both module calls (the baseline is the ``nn.Linear`` a
    family replaces, Python call overhead included); ``compile`` compiles both."""
    if mode == "compile":
        module, dense = torch.compile(module), torch.compile(dense)
    return {"family": lambda: module(x), "dense": lambda: dense(x)}


def run_case(case: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    device, mode = ctx.device, case["mode"]
    if mode in CUDA_ONLY and not device.startswith("cuda"):
        raise NotApplicable(f"mode {mode} needs --device cuda")
    out_f, in_f, tokens = case["out_features"], case["in_features"], case["tokens"]
    module, dense, x, hparams = case_modules(case, device, ctx.dtype, ctx.seed)
    if mode == "triton":
        if importlib.util.find_spec("triton") is None:  # a missing package: an error row, never a gap
            raise StructbenchError("mode triton needs Triton: pip install -e .[triton]")
        if "triton" not in module.impls:
            raise NotApplicable(f"{case['family']} has no fused Triton forward")
        module.use_impl("triton")
    row: dict[str, Any] = {"hparams": hparams, "rho_actual": module.rho_actual, "macs_ratio": module.macs_ratio, "dtype": ctx.dtype, "device": device, "threads": ctx.threads}

    with torch.inference_mode(), (torch.cuda.device(device) if device.startswith("cuda") else nullcontext()):
        got = module(x)
        ref = x @ module.to_dense().T + module.bias
        err = float((got - ref).norm() / ref.norm().clamp_min(1e-30))
        row["max_abs_err"] = float((got - ref).abs().max())
        row["rel_err"] = err
        if err > TOLERANCE[ctx.dtype]:
            return [{**row, "status": "error", "reason": f"forward differs from to_dense: relative error {err:.3g}"}]

        fns = _callables(mode, module, dense, x)
        hold = ctx.config.get("hold_heap", HOLD_HEAP) and not device.startswith("cuda")
        with held_heap() if hold else nullcontext(False) as held:
            for attempt in range(1, ctx.retry_noisy + 2):  # a noisy measurement is taken again, up to the budget
                times = _times(fns, mode, device, case, ctx.threads)
                fam_t, dense_t = times["family"], times["dense"]
                speedup, low, high = speedup_interval(dense_t, fam_t)
                if _precise(speedup, low, high, case["precision"]):
                    break
            # per-op clocks: CPU only (on CUDA an op returns before its kernel ends), and of
            # the eager forward (a compiled one calls its kernels past the dispatcher); the
            # timing has warmed it up; up to 5 calls within about PROFILE_SECONDS
            products = (product_share(fns["family"], max(1, min(5, int(PROFILE_SECONDS / fam_t.median))))
                        if mode == "eager" and device == "cpu" else None)
        row["attempts"] = attempt
        row["heap_held"] = held
        peak = peak_bytes(fns["family"], device)
        dense_peak = peak_bytes(fns["dense"], device)

    macs = module.macs(tokens)
    counted = _fvcore_macs(module, x)
    macs_agree = abs(counted.total - macs) <= MACS_TOLERANCE * macs
    if not macs_agree:
        ctx.log(f"{case['family']} {case['shape']}: fvcore counts {counted.total} MACs, analytic {macs} "
                f"(unsupported ops: {counted.unsupported_ops})")
    dense_macs = tokens * out_f * in_f
    pbytes = module_bytes(module)
    io_bytes = (x.numel() + tokens * out_f) * x.element_size()
    ideal = dense_macs / macs if macs else float("inf")
    row.update(
        median_s=fam_t.median, iqr_s=fam_t.iqr, runs=fam_t.runs, samples_s=fam_t.stored(),
        dense_median_s=dense_t.median, dense_iqr_s=dense_t.iqr, dense_samples_s=dense_t.stored(),
        speedup=speedup, speedup_low=low, speedup_high=high, ideal_speedup=ideal, efficiency=speedup / ideal,
        macs=macs, macs_fvcore=counted.total, macs_fvcore_tokens=min(tokens, COUNT_TOKENS), macs_agree=macs_agree,
        unsupported_ops=counted.unsupported_ops, dense_macs=dense_macs,
        gflops=2 * macs / fam_t.median / 1e9, dense_gflops=2 * dense_macs / dense_t.median / 1e9,
        intensity=2 * macs / (pbytes + io_bytes), param_bytes=pbytes, params=module.num_params(),
        peak_mem_bytes=peak, dense_peak_mem_bytes=dense_peak,
        noisy=not _precise(speedup, low, high, case["precision"]),
        products_share=products,
        products_efficiency=speedup / ideal / products if products else None,
    )
    return [row]


def _fvcore_macs(module: StructuredLinear, x: torch.Tensor) -> MacCount:
    """fvcore's count of the case's forward, traced on its first ``COUNT_TOKENS`` tokens and
    scaled to all of them. Every forward is token-wise, so its MACs are linear in tokens
    (``tests/test_families`` checks the count at several token counts); tracing all of them
    would hold every op's output for the trace, the chunked intermediates too (Kronecker
    11008x4096 at rho 0.5: about 85 MB a token, 43 GB at 512 tokens). A fused kernel is one
    opaque call, so the count goes through the PyTorch forward of the same weights."""
    impl = module.impl
    module.impl = "torch"
    try:
        counted = fvcore_macs(module, x[:COUNT_TOKENS])
    finally:
        module.impl = impl
    return MacCount(counted.total * x.shape[0] // min(x.shape[0], COUNT_TOKENS), counted.unsupported_ops)


def _times(fns: dict[str, Callable[[], object]], mode: str, device: str, case: dict[str, Any],
           threads: int) -> dict[str, Timing]:
    if mode == "cuda-graph":
        return cuda_graph_times(fns)
    if mode == "cold-l2":
        return cuda_event_times(fns, flush=l2_flush_buffer(device))
    if device.startswith("cuda"):
        return cuda_event_times(fns)
    precise = lambda samples: _precise(*speedup_interval(Timing(samples["dense"]), Timing(samples["family"])),
                                       case["precision"])
    return interleaved(fns, threads=threads, min_run_time=case["min_run_time"], rounds=case["rounds"],
                       until=precise, max_seconds=case["max_time"])


def speedup_interval(dense: Timing, family: Timing) -> tuple[float, float, float]:
    """The speedup and its 95 % interval: the median of the per-round ratios dense / family
    (each round times both back to back, so a ratio is paired against the machine's drift)
    with the distribution-free interval of that median. Samples from event or graph timing
    pair the same way, call by call."""
    ratios = [d / f for d, f in zip(dense.samples, family.samples)]
    low, high = median_interval(ratios, CONFIDENCE)
    return statistics.median(ratios), low, high


def _precise(speedup: float, low: float, high: float, precision: float) -> bool:
    """Whether both ends of the interval lie within ``precision`` of the speedup."""
    return max(high / speedup - 1, 1 - low / speedup) <= precision


def assess(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Why a run's timings cannot be trusted. The dense family timed against the
    ``nn.Linear`` it wraps is the control: the same kernel on both sides, so where the call
    takes at least ``CONTROL_MIN_S`` its speedup is 1 on a quiet machine and anything outside
    ``CONTROL`` is interference (another job, frequency changes), which moves every other ratio
    too. In a shorter call the module's fixed overhead (shape check and reshapes, a few us that
    every family pays) shows as a speedup below 1: that row measures the overhead, not noise.
    More than ``NOISY_SHARE`` of noisy rows says the machine is unsteady from the spread of the
    samples."""
    ok = [r for r in rows if r.get("status") == "ok"]
    reasons = [f"dense-vs-dense control at {r['shape']}, {r['tokens']} tokens, {r['mode']}: speedup "
               f"{r['speedup']:.2f}, outside [{CONTROL[0]}, {CONTROL[1]}]"
               for r in ok if r["family"] == "dense" and r["dense_median_s"] >= CONTROL_MIN_S
               and not CONTROL[0] <= r["speedup"] <= CONTROL[1]]
    noisy = sum(bool(r.get("noisy")) for r in ok)
    if ok and noisy > NOISY_SHARE * len(ok):
        reasons.append(f"{noisy} of {len(ok)} rows noisy (the speedup's {CONFIDENCE:.0%} interval still wider than "
                       f"+-{ok[0].get('precision', PRECISION):.0%} when its time cap was hit)")
    return reasons


SUITE = Suite(
    name="kernels",
    version="1",
    description="Forward latency, MACs, bytes and peak memory of each family against dense",
    config_path=CONFIG_PATH,
    validate=validate,
    expand=expand,
    run_case=run_case,
    exclusive=True,
    assess=assess,
    schema=Schema(
        case_keys=("family", "shape", "rho", "tokens", "mode"),
        headline=("median_s",),
        hidden=("samples_s", "dense_samples_s", "unsupported_ops", "min_run_time", "rounds", "precision", "max_time"),
        samples={"median_s": "samples_s"},
        compare_on=("family", "shape", "out_features", "in_features", "rho", "tokens", "mode", "dtype"),
        cost_keys=("family", "shape", "tokens", "mode"),
    ),
    metrics={
        "median_s": Metric("s", False, "median forward latency"),
        "iqr_s": Metric("s", False, "interquartile range of the latency"),
        "speedup": Metric("x", True, "median of the per-round ratios dense / family, interleaved in one process"),
        "speedup_low": Metric("x", True, "lower end of the speedup's 95 % interval (distribution-free, of the median)"),
        "speedup_high": Metric("x", True, "upper end of the speedup's 95 % interval"),
        "ideal_speedup": Metric("x", True, "dense MACs / family MACs"),
        "efficiency": Metric("", True, "speedup / ideal"),
        "products_efficiency": Metric("", True, "efficiency of the forward's matrix products alone (CPU eager): "
                                      "the ceiling of any forward made of the same BLAS calls"),
        "products_share": Metric("", False, "share of the forward's op time in matrix products (CPU eager)"),
        "gflops": Metric("GFLOP/s", True, "2 x MACs / median"),
        "macs": Metric("MAC", False, "analytic multiply-adds"),
        "param_bytes": Metric("B", False, "bytes of parameters"),
        "peak_mem_bytes": Metric("B", False, "peak memory of one forward"),
    },
)
