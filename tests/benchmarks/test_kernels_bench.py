"""The kernels suite's quick cases as pytest-benchmark tests, for regression tracking across
commits (``--benchmark-autosave`` / ``--benchmark-compare``; see docs/tests.md).

Skipped by the default test run (``--benchmark-skip`` in pyproject's addopts); run with
``pytest tests/benchmarks --benchmark-only``. Cases come from ``suites/kernels/default.yaml``'s
``quick:`` section and the family registry, and are built by the suite's own
``case_modules``, so both tools time the same modules, with the heap held as the suite does. Each (shape, tokens) is one
benchmark group holding every family and the ``nn.Linear`` baseline.
"""
from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from structbench.config import load_config, resolve
from structbench.errors import NotApplicable
from structbench.measure.memory import held_heap
from suites.kernels.suite import CONFIG_PATH, case_modules, expand, validate

THREADS = int(os.environ.get("STRUCTBENCH_THREADS", os.cpu_count() or 1))
CASES = [c for c in expand(resolve("kernels", load_config(CONFIG_PATH), validate, quick=True)) if c["mode"] == "eager"]
BASELINES = list({(c["shape"], c["tokens"]): {**c, "family": "dense", "rho": 1.0} for c in CASES}.values())


def _id(case: dict[str, Any]) -> str:
    return f"{case['family']}-{case['shape']}-rho{case['rho']}-t{case['tokens']}"


def _bench(benchmark: Any, case: dict[str, Any], baseline: bool) -> None:
    torch.set_num_threads(THREADS)
    try:
        family, dense, x, hparams = case_modules(case, "cpu", "float32", seed=0)
    except NotApplicable as err:  # a shape the family cannot take
        pytest.skip(str(err))
    module = dense if baseline else family
    dense_macs = case["tokens"] * case["out_features"] * case["in_features"]
    benchmark.group = f"{case['shape']} tokens={case['tokens']}"
    benchmark.extra_info.update(family="nn.Linear" if baseline else case["family"], hparams=hparams, threads=THREADS,
                                macs=dense_macs if baseline else family.macs(case["tokens"]),
                                ideal_speedup=1.0 if baseline else dense_macs / family.macs(case["tokens"]))
    with torch.inference_mode():
        # Never time a wrong kernel: check against the dense matrix first.
        reference = x @ module.to_dense().T if hasattr(module, "to_dense") else x @ module.weight.T
        if module.bias is not None:
            reference = reference + module.bias
        torch.testing.assert_close(module(x), reference, rtol=1e-4, atol=1e-4)
        with held_heap() as held:  # as the suite times: no process faults its intermediates in afresh
            benchmark.extra_info["heap_held"] = held
            benchmark(module, x)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_family_forward(benchmark: Any, case: dict[str, Any]) -> None:
    _bench(benchmark, case, baseline=False)


@pytest.mark.parametrize("case", BASELINES, ids=lambda c: f"nn.Linear-{c['shape']}-t{c['tokens']}")
def test_nn_linear_forward(benchmark: Any, case: dict[str, Any]) -> None:
    _bench(benchmark, case, baseline=True)
