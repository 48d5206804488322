"""Synthetic kinds are reproducible and have the structure their names claim."""
from __future__ import annotations

import pytest
import torch

from structbench.errors import NotApplicable, StructbenchError
from structbench.linalg import relative_error
from structbench.families import get_family, list_families
from structbench.synthetic import kinds, make_matrix

AVAILABLE = [k for k, spec in kinds().items() if spec.family is None or spec.family in list_families()]


@pytest.mark.parametrize("kind", AVAILABLE)
def test_seeded_unit_rms_and_independent_of_global_rng(kind: str) -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = make_matrix(kind, 64, 128, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)  # callers' random streams are untouched
    torch.manual_seed(999)
    assert torch.equal(a, make_matrix(kind, 64, 128, seed=3))
    assert not torch.equal(a, make_matrix(kind, 64, 128, seed=4))
    assert a.shape == (64, 128) and a.dtype == torch.float32
    assert a.pow(2).mean().item() == pytest.approx(1.0, rel=1e-5)
    assert make_matrix(kind, 64, 128, seed=3, dtype=torch.float64).dtype == torch.float64


def test_lowrank_noise_is_rank_r_plus_the_stated_noise() -> None:
    w = make_matrix("lowrank-noise", 100, 200, seed=0, dtype=torch.float64, rank_fraction=0.1, noise=0.05)
    best = get_family("lowrank").from_dense(w, rank=10).to_dense()
    assert relative_error(w, best) == pytest.approx(0.05 / (1 + 0.05**2) ** 0.5, rel=0.15)
    clean = make_matrix("lowrank-noise", 100, 200, seed=0, dtype=torch.float64, noise=0.0)
    assert torch.linalg.matrix_rank(clean).item() == 10


def test_blockdiag_kind_is_zero_off_the_blocks_and_projects_exactly() -> None:
    w = make_matrix("blockdiag", 64, 128, seed=1, dtype=torch.float64, rho=0.25)
    blocks = w.view(4, 16, 4, 32)
    off = [blocks[i, :, j] for i in range(4) for j in range(4) if i != j]
    assert all(t.abs().max() == 0 for t in off)
    assert relative_error(w, get_family("blockdiag").from_dense(w, rho=0.25).to_dense()) < 1e-12


def test_block_lowrank_blocks_have_the_stated_rank() -> None:
    w = make_matrix("block-lowrank", 64, 128, seed=2, dtype=torch.float64, blocks=4, rank_fraction=0.25)
    ranks = {torch.linalg.matrix_rank(w[16 * i : 16 * (i + 1), 32 * j : 32 * (j + 1)]).item()
             for i in range(4) for j in range(4)}
    assert ranks == {4}
    assert torch.linalg.matrix_rank(w).item() == 64  # independent blocks: full rank overall
    with pytest.raises(NotApplicable, match="must divide"):
        make_matrix("block-lowrank", 66, 128, blocks=4)


def test_powerlaw_spectrum() -> None:
    w = make_matrix("powerlaw", 50, 80, seed=0, dtype=torch.float64, alpha=1.5)
    s = torch.linalg.svdvals(w)
    expected = torch.arange(1, 51, dtype=torch.float64) ** -1.5
    torch.testing.assert_close(s / s[0], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.skipif("monarch" not in list_families(), reason="monarch family not registered")
def test_monarch_kind_is_recovered_by_monarch() -> None:
    w = make_matrix("monarch", 64, 64, seed=0, dtype=torch.float64, rho=0.25)
    hp = get_family("monarch").hparams_for(64, 64, 0.25).hparams
    assert relative_error(w, get_family("monarch").from_dense(w, **hp).to_dense()) < 1e-6
    assert relative_error(w, get_family("lowrank").from_dense(w, rho=0.25).to_dense()) > 0.1


@pytest.mark.skipif("blast" not in list_families(), reason="blast family not registered")
def test_blast_kind_is_recovered_by_blast() -> None:
    hp = {"blocks": 4, "rank": 4}
    w = make_matrix("blast", 64, 64, seed=0, dtype=torch.float64, hparams=hp)
    assert relative_error(w, get_family("blast").from_dense(w, **hp, steps=100).to_dense()) < 1e-2


def test_bad_names_and_parameters() -> None:
    with pytest.raises(StructbenchError, match="unknown synthetic kind 'gausian'"):
        make_matrix("gausian", 8, 8)
    with pytest.raises(StructbenchError, match=r"no parameter\(s\) \['rank'\]"):
        make_matrix("gaussian", 8, 8, rank=2)
