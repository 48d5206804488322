"""Every family and every kernels mode on a GPU (skipped without CUDA; scripts/gpu_check.sh
runs this file there): the forward check in float32 and bfloat16, autograd, and one kernels
case per mode through the suite's own ``run_case``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from structbench.families import build, hparams_for, list_families
from structbench.suite import RunContext

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("family", list_families())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_forward_matches_dense_on_the_gpu(family: str, dtype: torch.dtype) -> None:
    hp = hparams_for(family, 0.5, out_features=256, in_features=512).hparams
    module = build(family, 512, 256, **hp).to("cuda", dtype).eval()
    x = torch.randn(37, 512, device="cuda", dtype=dtype)
    with torch.no_grad():
        want = (x.float() @ module.to_dense().float().T + module.bias.float())
        got = module(x).float()
    torch.cuda.synchronize()
    assert ((got - want).norm() / want.norm()).item() < TOLERANCE[dtype]


@pytest.mark.parametrize("family", list_families())
def test_backward_runs_on_the_gpu(family: str) -> None:
    hp = hparams_for(family, 0.5, out_features=256, in_features=512).hparams
    module = build(family, 512, 256, **hp).to("cuda").train()
    module(torch.randn(2, 9, 512, device="cuda")).square().mean().backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("mode", ["eager", "cuda-graph", "cold-l2", "compile", "triton"])
@pytest.mark.parametrize("family", ["lowrank", "monarch", "blast"])
def test_every_kernels_mode_gives_an_ok_row(tmp_path: Path, mode: str, family: str) -> None:
    from structbench.errors import StructbenchError
    from suites.kernels.suite import run_case

    if mode == "triton":
        pytest.importorskip("triton")
    case = {"family": family, "shape": "t", "out_features": 1024, "in_features": 1024, "rho": 0.5, "tokens": 64,
            "mode": mode, "min_run_time": 0.05, "rounds": 6, "precision": 0.05, "max_time": 0.5}
    ctx = RunContext(device="cuda", dtype="bfloat16", threads=1, seed=0, quick=True, run_dir=tmp_path,
                     cache_dir=tmp_path, config={})
    if mode == "triton" and family == "lowrank":
        with pytest.raises(StructbenchError, match="no 'triton' forward"):
            run_case(case, ctx)
        return
    (row,) = run_case(case, ctx)
    assert row.get("status", "ok") == "ok", row.get("reason")
    assert row["speedup"] > 0 and row["peak_mem_bytes"] > 0 and row["macs_agree"]
