"""Pixelfly (Chen et al. 2022): flat block butterfly plus low-rank, ``W = S + U V``.

``S`` lives on a ``B x B`` grid of ``(m/B) x (n/B)`` tiles; tile ``(i, j)`` is non-zero iff
``i == j`` or ``i XOR j == 2^t`` for ``t < k``, so every tile-row holds ``k + 1`` tiles.
They are stored row-major as ``tiles (B, m/B, (k+1) n/B)``, each row's tiles in ascending
column order, and ``S`` is never built. For ``k <= 1`` the tiles fill whole aligned groups of
``2^k`` rows and columns, so ``S`` is block-diagonal and that storage is already its
``(B / 2^k, 2^k m/B, 2^k n/B)`` blocks: the forward is one ``bmm`` on a view of the input.
For ``k >= 2`` it gathers each tile-row's ``k + 1`` input chunks first (``k + 1`` times the
input's size).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from structbench.convergence import TOL, Stop, Trace, Tracker, check_stop
from structbench.errors import NotApplicable, StructbenchError
from structbench.linalg import svd_factors
from structbench.initialization import unit_gain_
from structbench.registry import register_family
from structbench.structured import Promises, StructuredLinear, check_positive_int


ROUNDS = 40
"""Cap on the alternating projection's rounds (four times the 10 it once took); it stops
earlier once the error stalls over ``WINDOW`` rounds."""
WINDOW = 2
"""Rounds over which the improvement is measured: each round is a full SVD, and alternation
improves monotonically, so a short window suffices."""


def butterfly_columns(tiles: int, butterfly: int) -> torch.Tensor:
    """``(B, k+1)`` tile-column indices of each tile-row, ``i`` and ``i XOR 2^t`` (``t < k``),
    in ascending order (which makes the ``k <= 1`` storage block-diagonal, see the module)."""
    rows = torch.arange(tiles).unsqueeze(1)
    offsets = torch.tensor([0] + [1 << t for t in range(butterfly)])
    return (rows ^ offsets).sort(dim=1).values


def _check(out_features: int, in_features: int, tiles: int, butterfly: int, rank: int) -> None:
    if tiles & (tiles - 1) or out_features % tiles or in_features % tiles:
        raise StructbenchError(
            f"pixelfly: tiles={tiles} must be a power of two dividing both dimensions of shape "
            f"{out_features}x{in_features}"
        )
    if butterfly < 0 or (1 << butterfly) > tiles:
        raise StructbenchError(f"pixelfly: butterfly={butterfly} must be in [0, log2(tiles)={tiles.bit_length() - 1}]")
    if rank > min(out_features, in_features):
        raise StructbenchError(f"pixelfly: rank {rank} exceeds min(out, in) = {min(out_features, in_features)}")


@register_family("pixelfly")
class PixelflyLinear(StructuredLinear):
    output_factors = ("tile_weight", "U")
    plot_order = 50
    plot_color = "#19d3f3"
    layout_version = 2  # each tile-row's tiles in ascending column order (k <= 1 is then block-diagonal)
    promises = Promises(exact_projection=False, projection_tolerance=0.05)
    """Alternating projection (until it stalls) on a random member: the sparse and low-rank
    parts overlap on the butterfly tiles, so alternation converges slowly; measured ~1e-2
    after 10 rounds."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        tiles: int,
        butterfly: int,
        rank: int,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.tiles = check_positive_int("tiles", tiles, self.family)
        self.butterfly = butterfly
        self.rank = check_positive_int("rank", rank, self.family)
        _check(out_features, in_features, tiles, butterfly, rank)
        slots = butterfly + 1
        p, q = out_features // tiles, in_features // tiles
        self.register_buffer("columns", butterfly_columns(tiles, butterfly), persistent=False)
        self.tile_weight = nn.Parameter(torch.empty(tiles, p, slots * q))
        self.U = nn.Parameter(torch.empty(out_features, rank))
        self.V = nn.Parameter(torch.empty(rank, in_features))
        # Each part carries half the variance of a dense layer at std 1/sqrt(n): the sparse
        # part sums (k+1) q inputs per output, the low-rank part n then r terms.
        unit_gain_(self.tile_weight, fan_in=slots * q, share=0.5)
        unit_gain_(self.V, fan_in=in_features)
        unit_gain_(self.U, fan_in=rank, share=0.5)

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        n_tok, group = x.shape[0], self.butterfly + 1
        if group == 1 << self.butterfly:  # k <= 1: block-diagonal, no gather (at k = 1, 1024x1024: 14 % of the forward)
            blocks = self.tile_weight.view(self.tiles // group, group * self.tile_weight.shape[1], -1)
            sparse = torch.bmm(x.view(n_tok, blocks.shape[0], -1).transpose(0, 1), blocks.transpose(1, 2))
        else:
            gathered = x.view(n_tok, self.tiles, -1)[:, self.columns]  # (N, B, k+1, q)
            gathered = gathered.reshape(n_tok, self.tiles, -1).transpose(0, 1)  # (B, N, (k+1) q)
            sparse = torch.bmm(gathered, self.tile_weight.transpose(1, 2))  # (B, N, p)
        out = F.linear(F.linear(x, self.V), self.U, bias)  # (N, m), bias fused
        # One pass adds the sparse part and undoes its (B, N) layout; in-place is
        # autograd-safe since addmm's backward does not need its output.
        out.view(n_tok, sparse.shape[0], -1).add_(sparse.transpose(0, 1))
        return out

    def _tile_grid(self) -> torch.Tensor:
        """The non-zero tiles as ``(B, k+1, p, q)``, slot ``s`` of row ``i`` at column ``columns[i, s]``."""
        return self.tile_weight.unflatten(-1, (self.butterfly + 1, -1)).transpose(-3, -2)

    def _sparse(self, tiles: torch.Tensor) -> torch.Tensor:
        """The ``m x n`` matrix (after any leading dims) holding ``tiles`` ``(B, k+1, p, q)`` at
        their places on the grid and zeros elsewhere."""
        b = self.tiles
        rows = torch.arange(b, device=self.columns.device).unsqueeze(1).expand_as(self.columns)
        grid = tiles.new_zeros(*tiles.shape[:-4], b, b, *tiles.shape[-2:])
        grid[..., rows, self.columns, :, :] = tiles
        return grid.transpose(-3, -2).reshape(*tiles.shape[:-4], self.out_features, self.in_features)

    def to_dense(self) -> torch.Tensor:
        return self._sparse(self._tile_grid()) + self.U @ self.V

    @torch.no_grad()
    def scale_input_(self, d: torch.Tensor) -> None:
        chunks = d.unflatten(-1, (self.tiles, -1))[..., self.columns, :]  # (B, k+1, q): the input chunk each slot reads
        self.tile_weight.unflatten(-1, (self.butterfly + 1, -1)).mul_(chunks.unsqueeze(-3))
        self.V.mul_(d.unsqueeze(-2))

    @property
    def hparams(self) -> dict[str, Any]:
        return {"tiles": self.tiles, "butterfly": self.butterfly, "rank": self.rank}

    @classmethod
    def weight_params(cls, out_features: int, in_features: int, tiles: int, butterfly: int, rank: int) -> int:
        return (butterfly + 1) * out_features * in_features // tiles + rank * (out_features + in_features)

    @classmethod
    def _hparams_for(cls, out_features: int, in_features: int, rho: float) -> dict[str, Any]:
        """Give about half the budget to the butterfly (the split the Pixelfly paper favours),
        the rest to the low-rank term; among butterflies of equal density prefer a real
        butterfly (``k >= 1``) over plain block-diagonal, then bigger tiles."""
        g = math.gcd(out_features, in_features)
        options = [
            ((k + 1) / b, b, k)
            for b in (1 << e for e in range(1, g.bit_length()))
            if g % b == 0
            for k in range(b.bit_length())
            if (1 << k) <= b and (k + 1) / b <= rho / 2
        ]
        if not options:
            raise NotApplicable(f"pixelfly: no tile grid divides shape {out_features}x{in_features} with rho <= {rho}")
        frac, tiles, butterfly = max(options, key=lambda o: (o[0], min(o[2], 1), -o[1]))
        rank = int((rho - frac) * out_features * in_features // (out_features + in_features))
        rank = min(rank, min(out_features, in_features))
        if rank < 1:
            raise NotApplicable(f"pixelfly: rho={rho} leaves no rank-1 term for shape {out_features}x{in_features}")
        return {"tiles": tiles, "butterfly": butterfly, "rank": rank}

    def _project(self, weight: torch.Tensor, *, rounds: int = ROUNDS, tol: float = TOL) -> Trace:
        """Alternate ``S = mask * (W - UV)`` and ``UV = SVD_r(W - S)``, starting from ``UV = 0``, until
        the error ``||W - S - UV||_F`` improves by less than ``tol`` over ``WINDOW`` rounds (each
        member of a stack on its own), or ``rounds``."""
        check_positive_int("rounds", rounds, self.family)
        check_stop("rounds", rounds, tol, self.family)
        b, (p, q) = self.tiles, (self.out_features // self.tiles, self.in_features // self.tiles)
        rows = torch.arange(b, device=weight.device).unsqueeze(1).expand_as(self.columns)

        def tiles_of(w: torch.Tensor) -> torch.Tensor:  # (..., B, k+1, p, q): the tiles under the mask
            return w.unflatten(-1, (b, q)).unflatten(-3, (b, p)).transpose(-3, -2)[..., rows, self.columns, :, :]

        norm = torch.linalg.matrix_norm(weight).clamp(min=torch.finfo(weight.dtype).tiny)
        tracker = Tracker(torch.ones_like(norm), Stop(rounds, tol, WINDOW))
        tiles = tiles_of(weight)
        u, v = svd_factors(weight - self._sparse(tiles), self.rank)
        while tracker.record(torch.linalg.matrix_norm(weight - self._sparse(tiles) - u @ v) / norm):
            moving = tracker.active.view(-1, *([1] * (tiles.dim() - 1)))
            new_tiles = tiles_of(weight - u @ v)
            new_u, new_v = svd_factors(weight - self._sparse(new_tiles), self.rank)
            tiles = torch.where(moving, new_tiles, tiles)
            u, v = torch.where(moving[..., 0, 0], new_u, u), torch.where(moving[..., 0, 0], new_v, v)
        self.tile_weight.copy_(tiles.transpose(-3, -2).flatten(-2))
        self.U.copy_(u)
        self.V.copy_(v)
        return tracker.trace()
