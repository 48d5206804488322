"""Shared fixtures: deterministic seeds and float64 by default for exactness checks."""
from __future__ import annotations

import pytest
import torch


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
