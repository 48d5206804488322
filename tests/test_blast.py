"""BLAST-specific properties: special cases of the structure and the factorization's behaviour."""
from __future__ import annotations

import pytest
import torch

from matrices.blast import BlastLinear, blast_dense, factorize
from structbench.errors import StructbenchError
from structbench.linalg import relative_error


def test_one_block_is_low_rank() -> None:
    layer = BlastLinear(48, 32, bias=False, blocks=1, rank=5).double()
    u, v, s = layer.U[0], layer.V[0], layer.S[0, 0]
    x = torch.randn(7, 48, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ (u * s @ v.T).T)
    assert torch.linalg.matrix_rank(layer.to_dense()) == 5


def test_diagonal_coupling_is_block_diagonal_low_rank() -> None:
    layer = BlastLinear(64, 64, bias=False, blocks=4, rank=3).double()
    with torch.no_grad():
        layer.S.mul_(torch.eye(4, dtype=torch.float64).unsqueeze(-1))
    tiles = layer.to_dense().detach().reshape(4, 16, 4, 16)
    for i in range(4):
        for j in range(4):
            norm = tiles[i, :, j, :].norm()
            assert (norm > 0) if i == j else (norm == 0)
            if i == j:
                assert torch.linalg.matrix_rank(tiles[i, :, j, :]) == 3


def test_precgd_fits_low_rank_target_exactly() -> None:
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(128, 16, generator=gen, dtype=torch.float64) @ torch.randn(16, 128, generator=gen, dtype=torch.float64)
    fit = factorize(target, blocks=4, rank=16, steps=100)
    assert fit.errors[-1] < 1e-4
    layer = BlastLinear.from_dense(target, blocks=4, rank=16, steps=100)
    assert relative_error(target, layer.to_dense().detach()) < 1e-4


def test_precgd_beats_gd_when_overparameterised() -> None:
    target = BlastLinear(128, 128, bias=False, blocks=4, rank=8).double().to_dense().detach()
    pre = factorize(target, blocks=4, rank=24, steps=150, method="precgd")
    gd = factorize(target, blocks=4, rank=24, steps=150, method="gd")
    assert pre.errors[-1] < 0.05
    assert pre.errors[-1] * 10 < gd.errors[-1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reported_error_is_the_true_error(dtype: torch.dtype) -> None:
    """Loose fits report the error from Gram matrices, tight ones from the formed residual:
    both must equal what the returned factors give."""
    gen = torch.Generator().manual_seed(2)
    for target in (torch.randn(96, 64, generator=gen, dtype=dtype),
                   torch.randn(96, 8, generator=gen, dtype=dtype) @ torch.randn(8, 64, generator=gen, dtype=dtype)):
        fit = factorize(target, blocks=4, rank=8, steps=60)
        true = relative_error(target.double(), blast_dense(fit.U, fit.S, fit.V).double())
        assert fit.errors[-1] == pytest.approx(true, rel=1e-3, abs=1e-6)


def test_seeded_and_reports_progress() -> None:
    target = torch.randn(64, 64, dtype=torch.float64)
    seen: list[tuple[int, float]] = []
    a = factorize(target, 4, 8, steps=20, seed=3, progress=lambda it, err: seen.append((it, err)))
    b = factorize(target, 4, 8, steps=20, seed=3)
    c = factorize(target, 4, 8, steps=20, seed=4)
    assert torch.equal(a.U, b.U) and torch.equal(a.S, b.S) and a.errors == b.errors
    assert not torch.equal(a.U, c.U)
    assert [it for it, _ in seen] == list(range(1, 21))
    assert seen[-1][1] < seen[0][1]


def test_bad_inputs_are_clear() -> None:
    with pytest.raises(StructbenchError, match="blocks=3 must divide"):
        BlastLinear(64, 64, blocks=3, rank=4)
    with pytest.raises(StructbenchError, match="rank 100 exceeds"):
        BlastLinear(64, 64, blocks=4, rank=100)
    with pytest.raises(StructbenchError, match="unknown factorization method 'adam'"):
        factorize(torch.randn(8, 8), 2, 2, method="adam")
