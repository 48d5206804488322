"""Pixelfly-specific properties: the butterfly mask and the alternating projection."""
from __future__ import annotations

import pytest
import torch

from matrices.pixelfly import PixelflyLinear, butterfly_columns
from structbench.errors import StructbenchError
from structbench.linalg import relative_error, svd_factors


def test_mask_has_k_plus_one_tiles_per_row_and_is_symmetric() -> None:
    cols = butterfly_columns(16, 3)
    assert cols.shape == (16, 4)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[torch.arange(16).unsqueeze(1), cols] = True
    assert (mask.sum(1) == 4).all() and torch.equal(mask, mask.T)
    for i in range(16):
        assert set(cols[i].tolist()) == {i} | {i ^ (1 << t) for t in range(3)}


def test_sparse_part_is_zero_off_the_mask() -> None:
    layer = PixelflyLinear(64, 64, bias=False, tiles=8, butterfly=1, rank=1).double()
    with torch.no_grad():
        layer.U.zero_()
    dense = layer.to_dense().detach().reshape(8, 8, 8, 8).transpose(1, 2)  # (tile row, tile col, p, q)
    nonzero = dense.abs().sum((2, 3)) > 0
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[torch.arange(8).unsqueeze(1), butterfly_columns(8, 1)] = True
    assert torch.equal(nonzero, expected)


def test_projection_beats_pure_low_rank_and_improves_with_rounds() -> None:
    weight = torch.randn(64, 64, dtype=torch.float64)
    hp = {"tiles": 8, "butterfly": 1, "rank": 8}
    errors = [relative_error(weight, PixelflyLinear.from_dense(weight, rounds=k, **hp).to_dense().detach()) for k in (1, 3, 10)]
    assert errors[0] >= errors[1] >= errors[2]
    u, v = svd_factors(weight, 8)
    assert errors[-1] < relative_error(weight, u @ v)


def test_bad_hparams_are_clear() -> None:
    with pytest.raises(StructbenchError, match="tiles=6 must be a power of two"):
        PixelflyLinear(48, 48, tiles=6, butterfly=1, rank=2)
    with pytest.raises(StructbenchError, match="butterfly=3"):
        PixelflyLinear(64, 64, tiles=4, butterfly=3, rank=2)
