"""Time this project's PrecGD against the official BLAST implementation, per iteration, on
the three kinds of target the suites fit: a Gaussian matrix (approx, synthetic), a random
BLAST matrix of known rank (approx, convergence) and a real SmolLM2 weight (approx and
llama-compress). Prints one markdown table: ms per iteration of both, their ratio, and the
final errors (ours at step 1 and 2, the official at its step 1, which is our step 2).

The official code is not a dependency: pass the path of ``ops/blast_ops.py`` from a clone
of github.com/changwoolee/BLAST (it imports ``einops`` and ``tqdm``; ``pip install einops``).

    .venv/bin/python scripts/precgd_vs_official.py --official ~/BLAST/ops/blast_ops.py
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matrices.blast import factorize  # noqa: E402
from structbench.linalg import relative_error  # noqa: E402
from structbench.models import weights as model_weights  # noqa: E402
from structbench.synthetic import make_matrix  # noqa: E402

DELTA0 = 0.1  # both codes damp by delta0 * ||A - Ahat||; the official default is 1.0


def load_official(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("blast_ops_official", path) if path.is_file() else None
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: --official {path}: not a Python file; accepted: the path of ops/blast_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def targets(sizes: int) -> list[tuple[str, torch.Tensor, dict[int, int]]]:
    """(name, matrix, blocks -> fitted rank): ranks near rho 0.5 for the dense-like targets,
    twice the true rank for the BLAST target (the over-parameterised fit of the convergence
    experiment)."""
    gaussian = make_matrix("gaussian", sizes, sizes, 0)
    blast = {b: make_matrix("blast", sizes, sizes, 0, hparams={"blocks": b, "rank": 64}) for b in (4, 16)}
    smollm = {t: w for _, t, w in model_weights.linear_weights(model_weights.SMOLLM2, [10])}["gate"]
    return [
        ("gaussian", gaussian, {4: 256, 16: 256}),
        ("blast, r*=64 (b=4)", blast[4], {4: 128}),
        ("blast, r*=64 (b=16)", blast[16], {16: 128}),
        ("SmolLM2 layer 10 gate", smollm.float(), {4: 207, 16: 186}),
    ]


def per_iteration(fit: Callable[[], float], steps: int) -> tuple[float, float]:
    start = time.perf_counter()
    error = fit()
    return (time.perf_counter() - start) / steps * 1e3, error


def official_fit(ops: Any, A: torch.Tensor, b: int, r: int, steps: int) -> float:
    m, n = A.shape
    gen = torch.Generator().manual_seed(0)
    B = (torch.randn(b, m // b, r, generator=gen) * 1e-3).requires_grad_()
    C = (torch.randn(b, r, n // b, generator=gen) * 1e-3).requires_grad_()
    D = torch.randn(r, b, b, generator=gen).requires_grad_()
    B, C, D = ops._blast_precond_gd_single(A, B, C, D, T=steps, delta=DELTA0)
    with torch.no_grad():
        return relative_error(A.double(), ops.get_matrix(B, C, D).double())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="ops/blast_ops.py of changwoolee/BLAST")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024, help="side of the synthetic targets")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ops = load_official(args.official)
    print(f"| target | shape | b | r | ours ms/iter | official ms/iter | ours / official | error: ours step 1 | ours step 2 | official step 1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, A, ranks in targets(args.size):
        for b, r in ranks.items():
            factorize(A, b, r, steps=1)  # warm up allocator and kernels, both codes
            official_fit(ops, A, b, r, 1)
            ours_ms, ours1 = per_iteration(lambda: factorize(A, b, r, steps=args.steps, delta0=DELTA0).errors[-1], args.steps)
            _, ours2 = per_iteration(lambda: factorize(A, b, r, steps=args.steps, lr=2.0, delta0=DELTA0).errors[-1], args.steps)
            off_ms, off = per_iteration(lambda: official_fit(ops, A, b, r, args.steps), args.steps)
            print(f"| {name} | {A.shape[0]}x{A.shape[1]} | {b} | {r} | {ours_ms:.1f} | {off_ms:.1f} | "
                  f"{ours_ms / off_ms:.2f} | {ours1:.4g} | {ours2:.4g} | {off:.4g} |", flush=True)


if __name__ == "__main__":
    main()
