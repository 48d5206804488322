"""The math particular to BTT and the Kronecker sum (everything else is registry-driven):
BTT with ``n1 = m2 = b`` is Monarch with ``b`` blocks (rank 1 on ``b^2 x b^2``), and the
Van Loan-Pitsianis projection is the best sum of ``r`` Kronecker products."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

from structbench.errors import StructbenchError
from structbench.families import build, get_family
from structbench.linalg import CHUNK_FLOATS
from structbench.results import PROJECT_ROOT


@pytest.mark.parametrize(("m", "n", "blocks"), [(16, 16, 4), (36, 36, 6), (32, 64, 4)])
def test_btt_with_b_blocks_per_core_is_monarch_with_b_blocks(m: int, n: int, blocks: int) -> None:
    monarch = build("monarch", n, m, blocks=blocks).double()
    w = monarch.to_dense().detach()
    rank = min(m, n) // blocks**2  # Monarch's block rank: 1 for a square b^2 x b^2
    btt = get_family("btt").from_dense(w, in_blocks=blocks, out_blocks=blocks, rank=rank)
    assert torch.allclose(btt.to_dense(), w, atol=1e-10)  # every Monarch matrix is such a BTT...
    other = build("btt", n, m, in_blocks=blocks, out_blocks=blocks, rank=rank).double().to_dense().detach()
    back = get_family("monarch").from_dense(other, blocks=blocks)
    assert torch.allclose(back.to_dense(), other, atol=1e-10)  # ...and every such BTT a Monarch matrix
    assert get_family("btt").weight_params(m, n, in_blocks=blocks, out_blocks=blocks, rank=rank) == \
        get_family("monarch").weight_params(m, n, blocks=blocks)


def _brute_force_best(w: torch.Tensor, m1: int, n1: int, steps: int = 400) -> float:
    """The best error of one Kronecker product A (x) B found by alternating least squares from
    many starts: what the closed form must match or beat."""
    m2, n2 = w.shape[0] // m1, w.shape[1] // n1
    blocks = w.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3)  # (i1, j1, i2, j2)
    best = float("inf")
    for seed in range(5):
        b = torch.randn(m2, n2, dtype=w.dtype, generator=torch.Generator().manual_seed(seed))
        for _ in range(steps):
            a = torch.einsum("ijkl,kl->ij", blocks, b) / (b * b).sum()
            b = torch.einsum("ijkl,ij->kl", blocks, a) / (a * a).sum()
        best = min(best, float(torch.linalg.matrix_norm(w - torch.kron(a, b))))
    return best


@pytest.mark.parametrize(("m1", "n1", "m2", "n2"), [(2, 3, 3, 2), (4, 2, 2, 4), (3, 3, 3, 3)])
def test_kronecker_projection_is_the_best_single_product(m1: int, n1: int, m2: int, n2: int) -> None:
    w = torch.randn(m1 * m2, n1 * n2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    fit = get_family("kronecker").from_dense(w, out_factor=m1, in_factor=n1, rank=1)
    ours = float(torch.linalg.matrix_norm(w - fit.to_dense().detach()))
    assert ours <= _brute_force_best(w, m1, n1) + 1e-9
    # and it is the Kronecker product of its factors
    assert torch.allclose(fit.to_dense(), torch.kron(fit.A[0], fit.B[0]))


def test_kronecker_sum_error_is_the_dropped_spectrum_of_the_rearrangement() -> None:
    m1, n1, m2, n2, r = 4, 3, 3, 4, 3
    w = torch.randn(m1 * m2, n1 * n2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    rearranged = w.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)
    s = torch.linalg.svdvals(rearranged)
    fit = get_family("kronecker").from_dense(w, out_factor=m1, in_factor=n1, rank=r)
    err = torch.linalg.matrix_norm(w - fit.to_dense().detach()) ** 2
    assert float(err) == pytest.approx(float((s[r:] ** 2).sum()), rel=1e-9)


def test_kronecker_macs_are_not_its_parameters_and_rho_budgets_parameters() -> None:
    cls = get_family("kronecker")
    fit = cls.hparams_for(576, 576, 0.5)
    layer = build("kronecker", 576, 576, **fit.hparams)
    assert layer.rho_actual == fit.rho_actual <= 0.5 and layer.num_params() == cls.weight_params(576, 576, **fit.hparams) + 576
    assert layer.macs_per_token() > 576 * 576  # balanced factors: ~sqrt(n) MACs per stored number
    with pytest.raises(StructbenchError, match="d = d1"):
        layer.scale_input_(torch.rand(576) + 0.5)  # only a Kronecker-product diagonal keeps the structure
    n1 = fit.hparams["in_factor"]
    d = torch.kron(torch.rand(n1, dtype=torch.float64) + 0.5, torch.rand(576 // n1, dtype=torch.float64) + 0.5)
    layer = layer.double()
    before = layer.to_dense().detach()
    layer.scale_input_(d)
    assert torch.allclose(layer.to_dense().detach(), before * d, rtol=1e-10, atol=1e-12)


def test_hparams_search_covers_every_factorisation() -> None:
    cls = get_family("btt")
    for rho in (0.1, 0.25, 0.5):
        hp = cls.hparams_for(64, 96, rho).hparams
        kept = cls.weight_params(64, 96, **hp)
        # no other (n1, m2, rank) keeps more within the budget
        for n1, m2 in itertools.product([d for d in range(1, 97) if 96 % d == 0], [d for d in range(1, 65) if 64 % d == 0]):
            top = min(96 // n1, 64 // m2)
            for rank in range(1, top + 1):
                other = cls.weight_params(64, 96, in_blocks=n1, out_blocks=m2, rank=rank)
                assert other <= kept or other > rho * 64 * 96


@pytest.mark.parametrize("family", ["btt", "kronecker"])
def test_a_chunked_forward_equals_the_whole_one(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from structbench import linalg
    from structbench.families import build, hparams_for

    module = build(family, 128, 64, **hparams_for(family, 0.5, out_features=64, in_features=128).hparams).double().eval()
    x = torch.randn(70, 128, dtype=torch.float64)
    with torch.no_grad():
        whole = module(x)
        monkeypatch.setattr(linalg, "CHUNK_FLOATS", 64)  # every call's intermediate is over budget now
        calls = []
        forward_rows = module._forward_rows
        monkeypatch.setattr(module, "_forward_rows", lambda rows, bias: calls.append(len(rows)) or forward_rows(rows, bias))
        chunked = module(x)
    assert len(calls) > 1 and sum(calls) == 70
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chunked, x @ module.to_dense().T + module.bias, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's /proc/self/clear_refs to reset the RSS high-water mark")
@pytest.mark.parametrize("family", ["btt", "kronecker"])
def test_a_chunked_forward_holds_one_chunk_of_intermediate_at_a_time(family: str) -> None:
    """At 1024x1024 and 256 tokens an unchunked Kronecker call peaks at 258 MiB (BTT's at 16
    MiB, already under the bound: for BTT this guards only against growth); in chunks, a
    call's peak stays near one chunk's budget (4 MiB) plus input and output. Holding every
    chunk's output for a ``cat`` let glibc keep every chunk's freed intermediate instead
    (Kronecker: 68 MB).

    The high-water mark is the whole process's, and how many fresh pages a call touches
    depends on the heap that earlier work left (after the rest of the test suite the same
    Kronecker call read 18 MiB, alone 6 MiB), so the call is measured in a fresh interpreter."""
    script = (
        "import torch\n"
        "from structbench.families import build, hparams_for\n"
        "from structbench.measure.memory import peak_bytes\n"
        f"module = build({family!r}, 1024, 1024, **hparams_for({family!r}, 0.5, out_features=1024, in_features=1024).hparams).eval()\n"
        "x = torch.randn(256, 1024)\n"
        "with torch.inference_mode():\n"
        "    module(x)\n"
        "    print(peak_bytes(lambda: module(x), 'cpu'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    peak = int(proc.stdout.split()[-1])
    assert peak < 4 * 4 * CHUNK_FLOATS + 2 * 256 * 1024 * 4, peak
