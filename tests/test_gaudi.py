"""Gaudi-GBLR-specific properties: masks, band-only forward, budget and projection."""
from __future__ import annotations

import pytest
import torch

from matrices.gaudi import GaudiLinear, gaudi_mask, hard_mask
from structbench.errors import StructbenchError
from structbench.families import build, hparams_for
from structbench.linalg import relative_error, svd_factors


def test_hard_mask_is_a_circular_boxcar() -> None:
    mask = hard_mask(torch.tensor([0.25, 0.5]), torch.tensor([0.875, 0.0]), 16)
    assert mask[0].tolist() == [1, 1] + [0] * 12 + [1, 1]  # wraps around the end
    assert mask[1].tolist() == [1] * 8 + [0] * 8


def test_soft_mask_is_differentiable_and_sharpens_with_sigma() -> None:
    width = torch.tensor([0.3], requires_grad=True)
    loc = torch.tensor([0.2], requires_grad=True)
    gaudi_mask(width, loc, 64, 8.0).sum().backward()
    assert width.grad.abs() > 0 and loc.grad is not None
    hard = hard_mask(torch.tensor([0.25]), torch.tensor([0.25]), 64)
    errs = [(gaudi_mask(torch.tensor([0.25]), torch.tensor([0.25]), 64, s) - hard).abs().mean() for s in (2.0, 8.0, 32.0)]
    assert errs[0] > errs[1] > errs[2]


def test_eval_macs_count_band_entries() -> None:
    # budget_rank 6 on 64x32: at most 6 * (32 + 64) band MACs, rho <= 6 * 96 / 2048
    layer = GaudiLinear(64, 32, components=8, budget_rank=6).eval()
    m_out, m_in = layer.masks()
    active = (m_out.sum(1) > 0) & (m_in.sum(1) > 0)
    assert layer.macs(5) == 5 * int(((m_out.sum(1) + m_in.sum(1)) * active).sum())
    assert layer.macs(1) <= 6 * (32 + 64)
    assert layer.rho_actual <= 6 * 96 / 2048


def test_width_projection_meets_budget() -> None:
    layer = GaudiLinear(64, 64, components=16, budget_rank=6)
    with torch.no_grad():
        layer.width_in.fill_(1.0)
        layer.width_out.uniform_(0.5, 1.5)
    layer.project_widths_()
    spent = float((layer.width_in * 64 + layer.width_out * 64).sum().detach())
    assert spent <= 6 * (64 + 64) * (1 + 1e-6)
    assert spent >= 6 * (64 + 64) * (1 - 1e-3)  # the projection spends the whole budget
    assert (layer.width_in >= 0).all() and (layer.width_out <= 1).all()


def test_projection_competes_with_svd_and_is_seeded() -> None:
    weight = torch.randn(64, 64, dtype=torch.float64)
    a = GaudiLinear.from_dense(weight, components=64, budget_rank=16, steps=100, seed=1).eval()
    b = GaudiLinear.from_dense(weight, components=64, budget_rank=16, steps=100, seed=1).eval()
    torch.testing.assert_close(a.to_dense(), b.to_dense(), rtol=0, atol=0)
    u, v = svd_factors(weight, 16)  # low-rank with the same MACs: 16 * (64 + 64) = 0.5 * 64 * 64
    assert relative_error(weight, a.to_dense().detach()) < 1.05 * relative_error(weight, u @ v)
    assert a.rho_actual <= 0.5


def test_projected_bands_stay_frozen_in_train_mode_and_through_the_state_dict() -> None:
    """The polish phase fits the hard bands, so the fitted matrix must be the one a
    train-mode module (fine-tuning) and a reloaded module use, not the soft-mask one."""
    weight = torch.randn(64, 64, dtype=torch.float64)
    fit = GaudiLinear.from_dense(weight, rho=0.3, steps=30, polish=10).double()
    hard = fit.eval().to_dense().detach()
    torch.testing.assert_close(fit.train().to_dense().detach(), hard)
    x = torch.randn(5, 64, dtype=torch.float64)
    torch.testing.assert_close(fit(x), x @ hard.T)
    fresh = GaudiLinear(64, 64, bias=False, **fit.hparams).double()
    fresh.load_state_dict(fit.state_dict())
    assert fresh.bands_frozen
    torch.testing.assert_close(fresh.train().to_dense().detach(), hard)


def test_bad_hparams_are_clear() -> None:
    with pytest.raises(StructbenchError, match="budget_rank 5 exceeds components"):
        GaudiLinear(64, 64, components=4, budget_rank=5)
    with pytest.raises(StructbenchError, match="budget_rank must be a positive integer"):
        GaudiLinear(64, 64, components=4, budget_rank=0)


@pytest.mark.parametrize("shape", [(48, 144), (144, 48)])
def test_projection_keeps_both_sides_of_a_non_square_layer(shape: tuple[int, int]) -> None:
    """Input and output widths cost n and m MACs; the budget projection must not starve the
    pricier side (a cost-proportional shrinkage once left every input band empty)."""
    m, n = shape
    weight = torch.randn(m, n, dtype=torch.float64)
    layer = GaudiLinear.from_dense(weight, rho=0.2, steps=60, polish=20).eval()
    assert float(layer.width_in.detach().min()) > 0 or float(layer.width_in.detach().mean()) > 0.05
    assert float(layer.width_out.detach().mean()) > 0.05
    assert layer.rho_actual > 0.1  # the hard bands spend most of the budget
    u, v = svd_factors(weight, int(0.2 * m * n / (m + n)))
    assert relative_error(weight, layer.to_dense().detach()) < 1.1 * relative_error(weight, u @ v)


def test_eval_caches_follow_every_parameter_change() -> None:
    """Optimizer-style in-place updates, ``copy_`` and ``load_state_dict`` refresh the band
    forward's caches by themselves; an edit through ``.data`` (no version counter sees it) is
    refreshed by ``eval()``."""
    layer = build("gaudi", 64, 48, **hparams_for("gaudi", 0.5, out_features=48, in_features=64).hparams).double().eval()
    x = torch.randn(5, 64, dtype=torch.float64)

    def agrees() -> bool:
        with torch.no_grad():
            return torch.allclose(layer(x), x @ layer.to_dense().T + layer.bias)

    assert agrees()
    with torch.no_grad():
        layer.U.mul_(2.0)
        layer.loc_in.add_(0.1)
    assert agrees()
    layer.load_state_dict({k: v * 1.5 if k == "V" else v for k, v in layer.state_dict().items()})
    assert agrees()
    layer.V.data.mul_(3.0)  # invisible to version counters...
    layer.width_out.data.mul_(0.5)
    layer.eval()  # ...until the mode is set again
    assert agrees()


def test_a_layer_made_under_inference_mode_runs_and_sees_in_place_edits() -> None:
    """Inference tensors have no version counter, so the eval caches cannot be keyed on one:
    a layer built (or loaded) under ``torch.inference_mode`` runs uncached, and an in-place
    edit there shows in the next forward."""
    with torch.inference_mode():
        layer = build("gaudi", 64, 48, **hparams_for("gaudi", 0.5, out_features=48, in_features=64).hparams).double().eval()
        x = torch.randn(5, 64, dtype=torch.float64)
        assert torch.allclose(layer(x), x @ layer.to_dense().T + layer.bias)
        layer.U.mul_(2.0)
        layer.loc_in.add_(0.1)
        assert torch.allclose(layer(x), x @ layer.to_dense().T + layer.bias)
