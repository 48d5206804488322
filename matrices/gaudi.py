"""Gaudi-GBLR (Lee & Kim, ICLR 2024): low-rank components confined to learnable bands.

``W = sum_k (U_k * m_out_k) (V_k * m_in_k)``: component ``k`` (rank ``r_c``) only touches a
contiguous circular band of input columns (width ``w_in_k``, location ``l_in_k``, fractions
of ``n``) and of output rows (``w_out_k``, ``l_out_k``). Training uses the Gaudi mask, a
boxcar smoothed in the frequency domain so widths and locations get gradients; evaluation
uses the hard boxcar and a forward that gathers only each band.

What the numbers mean here: the factors are stored dense-sized (``num_params`` counts
them, plus the four band parameters per component), while ``rho`` and ``macs`` count the
entries inside the bands, ``sum_k r_c (|band_in_k| + |band_out_k|)``, which is what the
width budget limits and what the band-only forward computes.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from structbench.errors import StructbenchError
from structbench.linalg import relative_error, svd_factors
from structbench.registry import register_family
from structbench.structured import ProgressFn, StructuredLinear, check_positive_int

BAND_STEPS = 64
"""Hard band sizes are floored to multiples of ``length / 64`` so components fall into few
equal-width groups, each one batched product in the band-only forward."""


def gaudi_mask(width: torch.Tensor, location: torch.Tensor, length: int, sigma: float) -> torch.Tensor:
    """Smooth circular boxcar ``(K, length)``: the Fourier series of the band ``[l, l + w)``,
    ``w + 2 sum_f w sinc(w f) G(f) cos(2 pi f (t - l - w/2))``, damped by a Gaussian window
    ``G(f) = exp(-f^2 / 2 sigma^2)``; larger ``sigma`` is sharper (annealed up in training)."""
    w = width.clamp(0.0, 1.0).unsqueeze(1)
    centre = (location + width.clamp(0.0, 1.0) / 2).unsqueeze(1)
    n_freq = max(1, min(length // 2, math.ceil(3 * sigma)))
    f = torch.arange(1, n_freq + 1, dtype=width.dtype, device=width.device)
    t = torch.arange(length, dtype=width.dtype, device=width.device) / length
    amp = 2 * w * torch.sinc(w * f) * torch.exp(-(f**2) / (2 * sigma**2))  # (K, F)
    basis = 2 * math.pi * f.unsqueeze(1) * t  # (F, L)
    phase = 2 * math.pi * f * centre  # (K, F)
    return w + (amp * torch.cos(phase)) @ torch.cos(basis) + (amp * torch.sin(phase)) @ torch.sin(basis)


def band_sizes(width: torch.Tensor, length: int) -> torch.Tensor:
    step = max(1, length // BAND_STEPS)
    return (torch.floor(width.detach().clamp(0.0, 1.0) * length / step) * step).long().clamp(max=length)


def band_starts(location: torch.Tensor, length: int) -> torch.Tensor:
    return torch.floor(torch.remainder(location.detach(), 1.0) * length).long() % length


def hard_mask(width: torch.Tensor, location: torch.Tensor, length: int) -> torch.Tensor:
    """The evaluation mask ``(K, length)``: exactly the entries the band-only forward reads."""
    offset = (torch.arange(length, device=width.device) - band_starts(location, length).unsqueeze(1)) % length
    return (offset < band_sizes(width, length).unsqueeze(1)).to(width.dtype)


@register_family("gaudi")
class GaudiLinear(StructuredLinear):
    exact_projection = False
    projection_tolerance = 0.6
    """Bound for the SVD + Adam projection on a random member (random band locations, equal
    widths): it does not search locations globally, so it finds a different, worse band
    layout; measured 0.41-0.46 on the 64-128 test shapes (a Gaussian 64x64 at budget 0.5:
    0.60, against 0.62 for truncated SVD at equal MACs)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        components: int,
        budget: float,
        component_rank: int = 1,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.components = check_positive_int("components", components, self.family)
        self.component_rank = check_positive_int("component_rank", component_rank, self.family)
        if not isinstance(budget, (int, float)) or not 0 < budget <= 1:
            raise StructbenchError(f"gaudi: budget must be a fraction in (0, 1], got {budget!r}")
        self.budget = float(budget)
        k, rc = components, component_rank
        self.U = nn.Parameter(torch.empty(out_features, k, rc))
        self.V = nn.Parameter(torch.empty(k, rc, in_features))
        self.width_in = nn.Parameter(torch.empty(k))
        self.width_out = nn.Parameter(torch.empty(k))
        self.loc_in = nn.Parameter(torch.rand(k))
        self.loc_out = nn.Parameter(torch.rand(k))
        self.register_buffer("sigma", torch.tensor(16.0))
        self._plan_cache: tuple[tuple[int, ...], list[Any]] | None = None
        # Equal widths spending the whole budget; each factor then preserves variance over
        # its band: V over |band_in| inputs, U over the k * rc component outputs.
        w = min(1.0, self.budget * out_features * in_features / (k * rc * (out_features + in_features)))
        nn.init.constant_(self.width_in, w)
        nn.init.constant_(self.width_out, w)
        nn.init.normal_(self.V, std=1.0 / math.sqrt(max(1.0, w * in_features)))
        nn.init.normal_(self.U, std=1.0 / math.sqrt(k * rc * max(w, 1.0 / out_features)))

    # ---- masks -----------------------------------------------------------------
    def masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m_out (K, m), m_in (K, n))``: soft while training, hard boxcars in eval mode."""
        if self.training:
            s = float(self.sigma)
            return (
                gaudi_mask(self.width_out, self.loc_out, self.out_features, s),
                gaudi_mask(self.width_in, self.loc_in, self.in_features, s),
            )
        return (
            hard_mask(self.width_out, self.loc_out, self.out_features),
            hard_mask(self.width_in, self.loc_in, self.in_features),
        )

    def _masked_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        m_out, m_in = self.masks()
        u = (self.U * m_out.T.unsqueeze(-1)).reshape(self.out_features, -1)
        v = (self.V * m_in.unsqueeze(1)).reshape(-1, self.in_features)
        return u, v

    # ---- band-only evaluation forward ------------------------------------------
    def _plan(self) -> list[Any]:
        """Components grouped by equal band size, with their gathered index tensors; cached
        until a band parameter changes (optimizer steps bump the tensors' versions)."""
        key = tuple(p._version for p in (self.width_in, self.width_out, self.loc_in, self.loc_out))
        key += (self.U.device.index or 0,)
        if self._plan_cache is not None and self._plan_cache[0] == key:
            return self._plan_cache[1]
        n, m = self.in_features, self.out_features
        c_in, c_out = band_sizes(self.width_in, n), band_sizes(self.width_out, m)
        s_in, s_out = band_starts(self.loc_in, n), band_starts(self.loc_out, m)
        active = ((c_in > 0) & (c_out > 0)).nonzero().flatten()
        sides = []
        for counts, starts, length in ((c_in, s_in, n), (c_out, s_out, m)):
            groups: dict[int, list[int]] = defaultdict(list)
            for k in active.tolist():
                groups[int(counts[k])].append(k)
            sides.append(
                [
                    (comps, (starts[comps].unsqueeze(1) + torch.arange(size, device=starts.device)) % length)
                    for size, ks in groups.items()
                    for comps in [torch.tensor(ks, device=starts.device)]
                ]
            )
        plan = [active, sides[0], sides[1]]
        self._plan_cache = (key, plan)
        return plan

    def _band_forward(self, x: torch.Tensor) -> torch.Tensor:
        active, in_groups, out_groups = self._plan()
        n_tok, rc = x.shape[0], self.component_rank
        y = x.new_zeros(self.components, n_tok, rc)
        for comps, idx in in_groups:  # y_k = x[:, band_in_k] V_k[:, band_in_k]^T
            v = self.V[comps.unsqueeze(1), :, idx]  # (G, c_in, rc)
            y.index_copy_(0, comps, torch.bmm(x[:, idx].transpose(0, 1), v))
        out = x.new_zeros(n_tok, self.out_features)
        for comps, idx in out_groups:  # out[:, band_out_k] += y_k U_k[band_out_k]^T
            u = self.U[idx, comps.unsqueeze(1)]  # (G, c_out, rc)
            z = torch.bmm(y[comps], u.transpose(1, 2))  # (G, N, c_out)
            out.index_add_(1, idx.flatten(), z.transpose(0, 1).reshape(n_tok, -1))
        return out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # soft masks have full support: two thin products, never W itself
            u, v = self._masked_factors()
            return F.linear(F.linear(x, v), u)
        return self._band_forward(x)

    def to_dense(self) -> torch.Tensor:
        u, v = self._masked_factors()
        return u @ v

    # ---- bookkeeping -------------------------------------------------------------
    @property
    def hparams(self) -> dict[str, Any]:
        return {"components": self.components, "budget": self.budget, "component_rank": self.component_rank}

    @classmethod
    def weight_params(
        cls, out_features: int, in_features: int, components: int, budget: float, component_rank: int = 1
    ) -> int:
        return components * component_rank * (out_features + in_features) + 4 * components

    @classmethod
    def effective_params(
        cls, out_features: int, in_features: int, components: int, budget: float, component_rank: int = 1
    ) -> int:
        return math.floor(budget * out_features * in_features)

    def macs_per_token(self) -> int:
        """Entries inside the hard bands of components that touch both sides."""
        c_in, c_out = band_sizes(self.width_in, self.in_features), band_sizes(self.width_out, self.out_features)
        active = (c_in > 0) & (c_out > 0)
        return int(self.component_rank * ((c_in + c_out) * active).sum())

    @classmethod
    def _hparams_for(cls, out_features: int, in_features: int, rho: float) -> dict[str, Any]:
        """As many rank-1 components as a full SVD has, their widths sharing ``rho * m * n``."""
        return {"components": min(out_features, in_features), "budget": rho, "component_rank": 1}

    # ---- width budget and projection ----------------------------------------------
    @torch.no_grad()
    def project_widths_(self, budget: float | None = None) -> None:
        """Euclidean projection of the widths onto ``[0, 1]`` and the budget
        ``sum_k r_c (w_in n + w_out m) <= budget m n`` (bisection on the shift ``tau`` in
        ``clip(w - tau a, 0, 1)``). The proximal step of training and of ``from_dense``;
        ``budget`` overrides the module's own for schedules that tighten it gradually."""
        n, m, rc = self.in_features, self.out_features, self.component_rank
        w = torch.cat([self.width_in, self.width_out])
        cost = torch.cat([torch.full_like(self.width_in, rc * n), torch.full_like(self.width_out, rc * m)])
        limit = (self.budget if budget is None else budget) * m * n

        def spent(tau: float) -> float:
            return float((cost * (w - tau * cost).clamp(0, 1)).sum())

        tau_lo, tau_hi = 0.0, float(w.max().clamp(min=0)) / float(cost.min())
        if spent(0.0) > limit:
            for _ in range(60):
                mid = (tau_lo + tau_hi) / 2
                tau_lo, tau_hi = (mid, tau_hi) if spent(mid) > limit else (tau_lo, mid)
        new = (w - tau_hi * cost if spent(0.0) > limit else w).clamp(0, 1)
        self.width_in.copy_(new[: self.components])
        self.width_out.copy_(new[self.components :])

    def _project(
        self,
        weight: torch.Tensor,
        *,
        steps: int = 200,
        lr: float = 1e-2,
        sigma: tuple[float, float] = (4.0, 32.0),
        shrink: float = 0.6,
        polish: int = 100,
        seed: int = 0,
        progress: ProgressFn | None = None,
    ) -> None:
        """SVD components at full width, then Adam on ``||What - W||^2 / ||W||^2`` through the
        soft mask with ``sigma`` annealed up, projecting widths onto a budget that tightens
        linearly from "everything" to the target over the first ``shrink`` of the steps, so
        locations can move while bands narrow (a jump straight to the budget would leave
        every band where it started)."""
        check_positive_int("steps", steps, self.family)
        torch.manual_seed(seed)
        k, rc = self.components, self.component_rank
        u, v = svd_factors(weight, min(k * rc, min(weight.shape)))
        self.U.zero_().view(self.out_features, -1)[:, : u.shape[1]].copy_(u)
        self.V.zero_().view(-1, self.in_features)[: v.shape[0]].copy_(v)
        self.width_in.fill_(1.0)
        self.width_out.fill_(1.0)
        self.loc_in.zero_()
        self.loc_out.zero_()
        was_training = self.training
        self.train()
        target = weight.to(self.U.dtype)
        norm2 = target.square().sum()
        opt = torch.optim.Adam([self.U, self.V, self.width_in, self.width_out, self.loc_in, self.loc_out], lr=lr)
        with torch.enable_grad():
            for step in range(steps):
                self.sigma.fill_(sigma[0] + (sigma[1] - sigma[0]) * step / max(1, steps - 1))
                opt.zero_grad(set_to_none=True)
                loss = (self.to_dense() - target).square().sum() / norm2
                loss.backward()
                opt.step()
                start = k * rc * (self.in_features + self.out_features) / (self.in_features * self.out_features)
                frac = min(1.0, (step + 1) / max(1.0, shrink * steps))
                self.project_widths_(start + (self.budget - start) * frac)
                if progress is not None:
                    progress(step + 1, math.sqrt(loss.item()))
        # Polish: with the bands frozen as hard boxcars, fit U and V alone, so what is
        # evaluated (hard masks) is what was optimised, not a soft-edged relaxation of it.
        self.eval()
        opt = torch.optim.Adam([self.U, self.V], lr=lr)
        with torch.enable_grad():
            for _ in range(polish):
                opt.zero_grad(set_to_none=True)
                loss = (self.to_dense() - target).square().sum() / norm2
                loss.backward()
                opt.step()
        if progress is not None:
            progress(steps, relative_error(target, self.to_dense().detach()))
        self.train(was_training)
