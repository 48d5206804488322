"""Shared fixtures: deterministic seeds and float64 by default for exactness checks."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels (tests/test_triton.py) run in its interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


TINY_KERNELS = """\
families: [lowrank, blockdiag]
shapes:
  tiny: [64, 64]
  odd: [67, 61]        # no block count divides it: blockdiag's cases are 'skipped' rows
rhos: [0.5]
tokens: [4, 8]
min_run_time: 0.01
rounds: 6
"""


@pytest.fixture(scope="session")
def kernels_run(tmp_path_factory: pytest.TempPathFactory):
    """One tiny kernels run through the CLI (in-process), shared by the CLI, results and
    report tests: (results root, run folder)."""
    from structbench.cli import main

    root = tmp_path_factory.mktemp("kernels-run")
    config = root / "tiny.yaml"
    config.write_text(TINY_KERNELS)
    out = root / "results"
    assert main(["--suite", "kernels", "--config", str(config), "--out", str(out), "--threads", "1"]) == 0
    (run_dir,) = (out / "kernels").iterdir()
    return out, run_dir


@pytest.fixture()
def stub_run(tmp_path):  # noqa: ANN001, ANN201 - a factory fixture
    """A stub suite of ``n`` cases ``{"i": k}`` running ``run_case``, with a fresh run folder and
    context: ``(suite, writer, ctx)`` for tests of the runner and its executors."""
    from structbench.results import RunWriter
    from structbench.suite import RunContext, Schema, Suite

    def make(run_case, n: int):  # noqa: ANN001, ANN202
        suite = Suite(name="stub", version="0", description="", config_path=tmp_path, validate=lambda c, where: c,
                      expand=lambda config: [{"i": i} for i in range(n)], run_case=run_case, schema=Schema(("i",)))
        writer = RunWriter.create(tmp_path, suite, {}, {"device": "cpu", "threads": 1}, 0)
        ctx = RunContext(device="cpu", dtype="float32", threads=1, seed=0, quick=False, run_dir=writer.run_dir,
                         cache_dir=tmp_path, config={})
        return suite, writer, ctx

    return make
