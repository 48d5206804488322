"""Gaudi-GBLR (Lee & Kim, ICLR 2024): low-rank components confined to learnable circular bands.

``W = sum_k (U_k * m_out_k) (V_k * m_in_k)``: component ``k`` (rank ``r_c``) reads a contiguous
circular band of input columns (width ``w_in_k``, location ``l_in_k``, both fractions of ``n``)
and writes a band of output rows (``w_out_k``, ``l_out_k``, fractions of ``m``). Training
uses the Gaudi mask, a boxcar smoothed in the frequency domain, so that widths and locations
receive gradients; evaluation uses the hard boxcar and a forward that reads only the bands.

Hard bands live on a grid of 16 to 64 equal tiles per side (see ``tile_count``):
a band is a run of whole tiles, so every tile of ``x`` meets all the components covering it
in one GEMM instead of one skinny product per component (rank-1 components are otherwise
memory-bound: one multiply-add per gathered element).

Budget convention. The paper states budgets as "low-rank rank ``rho * min(m, n)``-equivalent
MACs", i.e. as a mean width over ``min(m, n)`` full-width rank-1 components; taken literally
that spends ``rho min(m, n) (m + n)`` MACs, which for a square layer is ``2 rho`` of the dense
layer. This suite's ``rho`` is MACs (= effective parameters) over ``m n`` for every family, so a
target ``rho`` maps to the rank low-rank itself gets at that ``rho``,
``budget_rank = floor(rho m n / (m + n))``, and Gaudi may spend exactly that low-rank's MACs:
``sum_k r_c (w_in_k n + w_out_k m) <= budget_rank (m + n)`` (mean width
``budget_rank / (K r_c)`` when in and out widths are equal). Both families then sit at the
same ``rho_actual`` and the same MACs in every table.

What the numbers mean here: the factors are stored dense-sized, so ``num_params`` (the
trainable count) is ``K r_c (m + n) + 4 K`` whatever the widths: ``1.5 rho`` of the dense
layer's with ``hparams_for``'s ``K`` (``COMPONENTS_PER_BUDGET``). What compresses is compute: ``macs()`` and ``rho``
count the entries inside the current hard bands, ``r_c sum_k (|band_in_k| + |band_out_k|)``,
the work of the band-only forward; ``effective_params`` (what ``hparams_for`` budgets) is the
cap ``budget_rank (m + n)`` that ``macs_per_token`` never exceeds once widths are projected.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from structbench.convergence import TOL, Adam, Stop, Trace, check_stop, minimise
from structbench.errors import NotApplicable, StructbenchError
from structbench.linalg import svd_factors
from structbench.initialization import unit_gain_
from structbench.registry import register_family
from structbench.structured import ProgressFn, Promises, StructuredLinear, check_positive_int

TRAIN_SIGMA = (16.0, 32.0)
"""Soft-mask sharpness at construction and at the end of width learning (``after_optimizer_step``)."""
FREEZE_AT = 0.5
"""Fraction of training after which the bands are frozen and training goes on with hard masks.
The tile-grid hard masks differ from the soft ones (floored widths, rounded locations), so the
network needs time to adapt after freezing: on a small ViT (Fashion-MNIST, 6k images, 2
epochs, rho 0.25) freezing at 0.8 reached 51% test accuracy, at 0.5 59% (low-rank: 58%)."""

POLISH = 400
"""Cap on the polish phase's Adam steps (four times the 100 it once took in full); it stops
earlier once the error stalls."""

COMPONENTS_PER_BUDGET = 1.5
"""Components per unit of budget rank (mean band width 2/3). Every component costs
``m n`` MACs per projection step whatever its width, so fewer is faster, and it also fits
better: on SmolLM2 layer 10 (q 576x576, gate 1536x576, 200 + 100 steps), relative error
at rho 0.5 / 0.2 with a full SVD's 576 components was q .472 / .768, gate .553 / .814;
with 1.5x the budget rank q .438 / .721, gate .528 / .789, 1.6-4x faster (1.25x: within
.004 of 1.5x on q, k, down; 2x: in between)."""

MIN_TILE = 256
"""Entries per tile the grid aims for. The band forward moves about ``1 / tile`` floats
through gathers and scatter-adds per multiply-add, and its input-side GEMMs are only a
tile deep, so small tiles make it memory-bound. Measured at ``n = m = 4096``, rho 0.5, 2
threads, interleaved with dense (efficiency = speedup / ideal, tokens 16 / 128 / 512):
tiles of 64 entries 0.56 / 0.62 / 0.44, of 128 0.69 / 0.75 / 0.60, of 256 0.91 / 0.84 / 0.74.
The price is resolution: 4096-wide layers get the 1/16 grid small layers already have."""


def tile_count(length: int) -> int:
    """Tiles along a side of ``length``: its largest divisor ``<= clamp(length // MIN_TILE, 16, 64)``.

    Tiles are equal, so a band of ``floor(w T)`` tiles never exceeds ``w * length`` entries and
    the budget holds exactly. At least 16 tiles keep a 1/16 resolution of widths and
    locations on small layers (tiles of 4 at ``n = 64``, 36 at ``n = 576``); at most 64 bound
    the number of GEMMs per pass; in between, tiles of ``MIN_TILE`` entries (``n = 4096``:
    16 tiles of 256; ``n = 11008``: 43 of 256). A length with no divisor near the target (a
    prime) gets coarse tiles; the suites' layer shapes are all multiples of 16.
    """
    target = min(max(length // MIN_TILE, 16), 64, length)
    return max(d for d in range(1, target + 1) if length % d == 0)


def gaudi_mask(width: torch.Tensor, location: torch.Tensor, length: int, sigma: float) -> torch.Tensor:
    """Smooth circular boxcar ``(K, length)`` over the band ``[l, l + w)`` (fractions; any leading
    dims of ``width`` and ``location`` are kept, as for a stacked module's).

    The Fourier series of the periodic boxcar, ``w + 2 sum_f w sinc(w f) cos(2 pi f (t - c))``
    with ``c = l + w / 2``, damped by a Gaussian window ``exp(-f^2 / 2 sigma^2)`` so it is
    smooth in ``w`` and ``l``; a larger ``sigma`` is sharper (training anneals it up). Entry
    ``i`` is sampled at its cell centre ``(i + 1/2) / length``, so a band whose edges sit on
    cell boundaries tends to exactly the hard mask as ``sigma`` grows.
    """
    w = width.clamp(0.0, 1.0).unsqueeze(-1)
    centre = location.unsqueeze(-1) + w / 2
    n_freq = max(1, min(length // 2, math.ceil(3 * sigma)))
    f = torch.arange(1, n_freq + 1, dtype=width.dtype, device=width.device)
    t = (torch.arange(length, dtype=width.dtype, device=width.device) + 0.5) / length
    amp = 2 * w * torch.sinc(w * f) * torch.exp(-(f**2) / (2 * sigma**2))  # (K, F)
    basis = 2 * math.pi * f.unsqueeze(1) * t  # (F, L)
    phase = 2 * math.pi * f * centre  # (K, F)
    return w + (amp * torch.cos(phase)) @ torch.cos(basis) + (amp * torch.sin(phase)) @ torch.sin(basis)


def hard_bands(width: torch.Tensor, location: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first_tile, n_tiles)`` of each hard band on the grid of ``tile_count(length)`` tiles.

    Widths are floored (the budget stays an upper bound; ``1e-6`` absorbs round-off in widths
    such as ``0.25 * 64``) and locations rounded to the nearest tile boundary.
    """
    tiles = tile_count(length)
    count = torch.floor(width.detach().clamp(0.0, 1.0) * tiles + 1e-6).long().clamp(max=tiles)
    first = torch.round(torch.remainder(location.detach(), 1.0) * tiles).long() % tiles
    return first, count


def tile_membership(width: torch.Tensor, location: torch.Tensor, length: int) -> torch.Tensor:
    """Boolean ``(tiles, K)`` (after any leading dims of ``width``): whether tile ``t`` lies in
    component ``k``'s circular band."""
    tiles = tile_count(length)
    first, count = hard_bands(width, location, length)
    offset = (torch.arange(tiles, device=width.device).unsqueeze(-1) - first.unsqueeze(-2)) % tiles
    return offset < count.unsqueeze(-2)


def hard_mask(width: torch.Tensor, location: torch.Tensor, length: int) -> torch.Tensor:
    """The evaluation mask ``(K, length)`` of 0/1: exactly the entries the band forward reads."""
    inside = tile_membership(width, location, length).mT
    return inside.repeat_interleave(length // tile_count(length), dim=-1).to(width.dtype)


class _Side(NamedTuple):
    """Band layout of one side for the tiled forward."""

    tile: torch.Tensor  # (P,) tile of each (tile, component) pair, in tile order
    comp: torch.Tensor  # (P,) component of each pair
    tiles: list[tuple[int, torch.Tensor]]  # per non-empty tile: (tile, its components)


def _side(inside: torch.Tensor) -> _Side:
    tile, comp = inside.nonzero(as_tuple=True)  # row-major: sorted by tile
    counts = inside.sum(1).tolist()
    groups = torch.split(comp, counts)
    return _Side(tile, comp, [(t, g) for t, g in enumerate(groups) if counts[t]])


def _cache_key(tensors: tuple[torch.Tensor, ...]) -> tuple[tuple[int, int, torch.dtype], ...] | None:
    """Storage, version counter and dtype of each tensor, what the eval caches are keyed on;
    None when one is an inference tensor (made under ``torch.inference_mode``): it has no
    version counter, so an in-place edit would go unseen, and nothing is cached."""
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)


@register_family("gaudi")
class GaudiLinear(StructuredLinear):
    """Sum of ``components`` rank-``component_rank`` terms, each on a learnable band of rows
    and of columns, whose total band MACs ``budget_rank (m + n)`` caps (see module docstring).

    ``sigma`` (a buffer) is the Gaussian window of the soft mask; a training loop calls
    ``after_optimizer_step`` after each optimizer step, which anneals it up, projects the
    widths onto the budget and finally freezes the bands. The training-mode forward uses the
    soft masks, which have full support: it applies ``(U * m_out)`` and ``(V * m_in)`` as two
    thin products costing ``K r_c (m + n)`` MACs per token, never ``W`` itself; only the eval
    forward has the band cost ``macs()`` reports. ``to_dense`` follows the same mode, so
    ``forward(x) == x @ to_dense().T + bias`` holds in both.
    """
    plot_order = 60
    plot_color = "#ff6692"

    promises = Promises(exact_projection=False, projection_tolerance=0.6)
    """Bound for the projection on a random member of the family (random locations, equal
    widths). The target's bands are not searched globally: Adam moves locations only locally
    from where the shrinking bands settle, so it finds a different band layout that fits
    about as well as truncated SVD at equal MACs fits a generic matrix. Measured 0.40-0.50
    with the default options on the 64-128 test shapes at rho 0.5; 0.6 leaves room for the
    seed and shape spread without admitting a failed fit (which sits at 0.8 and above)."""

    output_factors = ("U",)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        components: int,
        budget_rank: int,
        component_rank: int = 1,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.components = check_positive_int("components", components, self.family)
        self.budget_rank = check_positive_int("budget_rank", budget_rank, self.family)
        self.component_rank = check_positive_int("component_rank", component_rank, self.family)
        if budget_rank > components * component_rank:
            raise StructbenchError(
                f"gaudi: budget_rank {budget_rank} exceeds components * component_rank = "
                f"{components * component_rank}, the MACs of every band at full width"
            )
        k, rc, m, n = components, component_rank, out_features, in_features
        self.U = nn.Parameter(torch.empty(m, k, rc))
        self.V = nn.Parameter(torch.empty(k, rc, n))
        self.width_in = nn.Parameter(torch.empty(k))
        self.width_out = nn.Parameter(torch.empty(k))
        self.loc_in = nn.Parameter(torch.rand(k))
        self.loc_out = nn.Parameter(torch.rand(k))
        self.register_buffer("sigma", torch.tensor(TRAIN_SIGMA[0]))
        # The state dict carries the flag (a buffer) so that a reloaded fit trains as fitted;
        # forward reads the Python copy, which costs no device sync.
        self.register_buffer("frozen", torch.tensor(False))
        self.bands_frozen = False
        self._plan_cache: tuple[tuple[Any, ...], tuple[_Side, _Side]] | None = None
        self._packed_cache: tuple[tuple[Any, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] | None = None
        # Equal widths spending the whole budget, snapped to whole tiles so that a fresh
        # layer's band forward already spends it (below one tile per band, flooring would
        # leave every band empty). Unit gain (structbench.initialization) measured on the masks this
        # layer applies: V_k sums the squared mask entries of its input band (at least one
        # tile, so a band that starts empty is sized for when it grows); U sums, per output
        # row, the squared masks of the components covering it, averaged over rows.
        w = budget_rank / (k * rc)
        nn.init.constant_(self.width_in, w)
        nn.init.constant_(self.width_out, w)
        self.snap_widths_()
        with torch.no_grad():
            m_out, m_in = self.masks()
            fan_v = m_in.square().sum(1).clamp(min=n // tile_count(n)).view(k, 1, 1)
            fan_u = rc * m_out.square().sum(0).mean().clamp(min=1.0)
        unit_gain_(self.V, fan_in=fan_v)
        unit_gain_(self.U, fan_in=fan_u)

    @property
    def bands_frozen(self) -> bool:
        """Set by ``after_optimizer_step`` late in training and by ``from_dense`` (whose polish
        phase fits the hard bands): from then on training uses the hard bands too, so
        ``to_dense`` and the forward are the same matrix in train and eval mode."""
        return self._bands_frozen

    @bands_frozen.setter
    def bands_frozen(self, value: bool) -> None:
        self._bands_frozen = bool(value)
        self.frozen.fill_(self._bands_frozen)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._bands_frozen = bool(self.frozen)

    # ---- masks -----------------------------------------------------------------
    def masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m_out (K, m), m_in (K, n))``: soft while training, hard boxcars in eval mode
        and once the bands are frozen."""
        if self.training and not self.bands_frozen:
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
        u = (self.U * m_out.mT.unsqueeze(-1)).flatten(-2)
        v = (self.V * m_in.unsqueeze(-2)).flatten(-3, -2)
        return u, v

    def _band_sizes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(entries_in, entries_out, active)`` per component; a component with an empty band
        on either side contributes nothing, so neither the forward nor ``macs`` counts it."""
        n, m = self.in_features, self.out_features
        c_in = hard_bands(self.width_in, self.loc_in, n)[1] * (n // tile_count(n))
        c_out = hard_bands(self.width_out, self.loc_out, m)[1] * (m // tile_count(m))
        return c_in, c_out, (c_in > 0) & (c_out > 0)

    # ---- band-only evaluation forward ------------------------------------------
    def train(self, mode: bool = True) -> "GaudiLinear":
        """Switching mode drops the eval caches: the one way to refresh them after an edit that
        no version counter sees (an in-place change through ``.data``)."""
        self._plan_cache = self._packed_cache = None
        return super().train(mode)

    def _plan(self) -> tuple[_Side, _Side]:
        """Per-tile component lists of both sides, cached until a band parameter changes
        (optimizer steps and ``copy_`` bump ``_version``; moves and reassignments change
        ``data_ptr``), so an eval loop pays for them once. Keyed without reading the values:
        a device sync per call would cost more than the lists and break CUDA-graph capture;
        an edit through ``.data`` is refreshed by ``eval()``."""
        key = _cache_key((self.width_in, self.width_out, self.loc_in, self.loc_out))
        if key is not None and self._plan_cache is not None and self._plan_cache[0] == key:
            return self._plan_cache[1]
        with torch.inference_mode(False):  # a plan built under inference_mode must serve autograd too
            active = self._band_sizes()[2]
            plan = (
                _side(tile_membership(self.width_in, self.loc_in, self.in_features) & active),
                _side(tile_membership(self.width_out, self.loc_out, self.out_features) & active),
            )
        self._plan_cache = (key, plan) if key is not None else None
        return plan

    def _packed_weights(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per non-empty tile, the slices of the covering components' factors as one matrix:
        ``(c_t r_c, s_in)`` from ``V`` and ``(c_t r_c, s_out)`` from ``U``. Gathered per call
        when autograd needs them; cached otherwise, keyed on the plan and the factors'
        storage and version counters (optimizer steps, ``copy_``, ``load_state_dict`` and
        ``.to`` all change them), since the gather moves as many floats as a token's MACs:
        gathering per call measured 1.2-2.0x slower at 1-128 tokens on SmolLM2 shapes. An
        edit through ``.data`` bypasses version counters; ``eval()`` after it refreshes the
        cache."""
        side_in, side_out = self._plan()
        factors = (self.U, self.V)
        plan_key, factors_key = self._plan_cache and self._plan_cache[0], _cache_key(factors)  # the plan was just keyed
        key = (plan_key, factors_key) if plan_key is not None and factors_key is not None else None
        cacheable = key is not None and not (torch.is_grad_enabled() and any(p.requires_grad for p in factors))
        if cacheable and self._packed_cache is not None and self._packed_cache[0] == key:
            return self._packed_cache[1]
        n, m, k, rc = self.in_features, self.out_features, self.components, self.component_rank
        t_in, t_out = tile_count(n), tile_count(m)
        s_in, s_out = n // t_in, m // t_out
        # (T, K, r_c, s) views, so one gather returns each pair's slice as a contiguous block.
        v_sel = self.V.view(k, rc, t_in, s_in).permute(2, 0, 1, 3)[side_in.tile, side_in.comp]
        u_sel = self.U.view(t_out, s_out, k, rc).permute(0, 2, 3, 1)[side_out.tile, side_out.comp]
        packed = (
            [w.reshape(-1, s_in) for w in torch.split(v_sel, [len(c) for _, c in side_in.tiles])],
            [w.reshape(-1, s_out) for w in torch.split(u_sel, [len(c) for _, c in side_out.tiles])],
        )
        self._packed_cache = (key, packed) if cacheable else None
        return packed

    def _band_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two tiled passes over token-minor component outputs (``(components, N)``) so every
        gather and scatter-add moves whole contiguous rows, one tile at a time while it is hot
        in cache. In: the tile-``t`` slices of the ``V_k`` covering tile ``t`` times that tile
        of ``x`` (one GEMM), scatter-added into the component outputs ``y``. Out: output tile
        ``t`` is those components' ``y_k`` times their rows of ``U_k`` (one GEMM, written
        token-major). MACs are exactly the band entries times ``r_c``; gathers and scatter-adds
        multiply nothing."""
        side_in, side_out = self._plan()
        w_in, w_out = self._packed_weights()
        n, m, k, rc = self.in_features, self.out_features, self.components, self.component_rank
        n_tok = x.shape[0]
        s_in, s_out = n // tile_count(n), m // tile_count(m)
        x_t = x.T
        y_t = x.new_zeros(k, rc, n_tok)
        for (t, comps), weight in zip(side_in.tiles, w_in):
            z = weight @ x_t[t * s_in : (t + 1) * s_in]
            y_t.index_add_(0, comps, z.view(-1, rc, n_tok))
        out = []  # token-major tiles: joined by one copy, where feature-major ones needed a transpose too
        covered = iter(zip(side_out.tiles, w_out))
        nxt = next(covered, None)
        for t in range(tile_count(m)):
            if nxt is not None and nxt[0][0] == t:
                (_, comps), weight = nxt
                out.append(y_t[comps].view(-1, n_tok).T @ weight)
                nxt = next(covered, None)
            else:
                out.append(x.new_zeros(n_tok, s_out))
        return torch.cat(out, dim=1)

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.training and not self.bands_frozen:
            u, v = self._masked_factors()
            return F.linear(F.linear(x, v), u, bias)
        out = self._band_forward(x)
        return out if bias is None else out.add_(bias)

    def to_dense(self) -> torch.Tensor:
        u, v = self._masked_factors()
        return u @ v

    @torch.no_grad()
    def scale_input_(self, d: torch.Tensor) -> None:
        self.V.mul_(d.unsqueeze(-2).unsqueeze(-2))  # masks multiply V entrywise, so they commute with the scaling

    def refine_parameters(self) -> list[nn.Parameter]:
        """The factors only: the bands stay where the projection froze them (hard boxcars)."""
        return [self.U, self.V]

    # ---- bookkeeping -------------------------------------------------------------
    @property
    def hparams(self) -> dict[str, Any]:
        return {"components": self.components, "budget_rank": self.budget_rank, "component_rank": self.component_rank}

    @classmethod
    def weight_params(
        cls, out_features: int, in_features: int, components: int, budget_rank: int, component_rank: int = 1
    ) -> int:
        """Stored and trainable: the dense-sized factors plus width and location of both sides."""
        return components * component_rank * (out_features + in_features) + 4 * components

    @classmethod
    def effective_params(
        cls, out_features: int, in_features: int, components: int, budget_rank: int, component_rank: int = 1
    ) -> int:
        """The band-entry cap the widths are projected under: the MACs of a rank-``budget_rank``
        low-rank layer (what ``hparams_for`` compares with ``rho``)."""
        return budget_rank * (out_features + in_features)

    def macs_per_token(self) -> int:
        """Band entries of the current hard masks, ``r_c sum_k (|band_in_k| + |band_out_k|)``
        over components with both bands non-empty: what the eval forward multiplies, and at
        most ``effective_params`` once widths respect the budget."""
        c_in, c_out, active = self._band_sizes()
        return int(self.component_rank * ((c_in + c_out) * active).sum())

    @classmethod
    def _hparams_for(cls, out_features: int, in_features: int, rho: float) -> dict[str, Any]:
        """Rank-1 components sharing low-rank's MACs at this ``rho``, ``COMPONENTS_PER_BUDGET``
        times as many as that low-rank's rank (at most a full SVD's count)."""
        budget_rank = int(rho * out_features * in_features // (out_features + in_features))
        if budget_rank < 1:
            raise NotApplicable(
                f"gaudi: rho={rho} leaves less than rank-1 MACs for shape {out_features}x{in_features}"
            )
        components = min(out_features, in_features, math.ceil(COMPONENTS_PER_BUDGET * budget_rank))
        return {"components": components, "budget_rank": budget_rank, "component_rank": 1}

    # ---- width budget and projection ----------------------------------------------
    @torch.no_grad()
    def project_widths_(self, macs: float | None = None) -> None:
        """Projection of the widths onto ``[0, 1]`` and the budget
        ``sum_k r_c (w_in_k n + w_out_k m) <= macs`` (default ``budget_rank (m + n)``), in the
        metric that weighs each width by its MAC cost ``a`` (``r_c n`` or ``r_c m``).

        The KKT solution is then a uniform shift, ``clip(w - tau, 0, 1)``, with ``tau`` found by
        bisection: the proximal step of the MAC-cost penalty ``tau sum_k a_k w_k``. (The plain
        Euclidean projection, ``clip(w - tau a)``, shrinks the pricier side ``max(m, n) / min(m, n)``
        times faster: on a 192x576 layer at rho 0.2 it drove every input band to width 0 and
        left an empty matrix, relative error 0.94.) It is the proximal step of training and of
        ``from_dense``; ``macs`` overrides the module's cap for schedules that tighten it gradually.
        """
        n, m, rc = self.in_features, self.out_features, self.component_rank
        w = torch.cat([self.width_in, self.width_out], -1).to(torch.float64)  # (..., 2K): one row per member
        cost = torch.cat([torch.full_like(self.width_in, rc * n), torch.full_like(self.width_out, rc * m)], -1).to(w)
        limit = float(self.budget_rank * (m + n) if macs is None else macs)

        def spent(tau: torch.Tensor) -> torch.Tensor:
            return (cost * (w - tau.unsqueeze(-1)).clamp(0, 1)).sum(-1)

        lo = torch.zeros(w.shape[:-1], dtype=w.dtype, device=w.device)
        hi = w.amax(-1).clamp(min=0)  # spent(hi) == 0
        for _ in range(60):
            mid = (lo + hi) / 2
            above = spent(mid) > limit
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        tau = torch.where(spent(torch.zeros_like(lo)) > limit, hi, 0.0)
        new = (w - tau.unsqueeze(-1)).clamp(0, 1)
        self.width_in.copy_(new[..., : self.components])
        self.width_out.copy_(new[..., self.components :])

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        """Width learning while training from scratch; a training loop calls this after every
        optimizer step with the fraction of training done (the hook every family may expose).

        Before ``FREEZE_AT``: the proximal step of the budget constraint, ``project_widths_``.
        Its solution ``clip(w - tau, 0, 1)`` is the proximal step of the paper's MAC-cost l1
        penalty on the widths (a soft threshold, in the metric weighing each width by its MAC
        cost) with the strength ``tau`` chosen each step as the smallest that meets the budget, so no separate l1
        step with a hand-tuned lambda is needed: gradients widen the useful bands and the
        shrinkage takes the MACs back from all of them, driving unhelpful bands to zero
        width. ``sigma`` anneals from ``TRAIN_SIGMA[0]`` (the value the initialisation was
        measured at) to ``TRAIN_SIGMA[1]`` so the soft masks sharpen towards boxcars.
        At ``FREEZE_AT``: widths snapped to whole tiles (spending the budget the hard masks'
        flooring would waste) and bands frozen; the rest of training uses the hard masks and
        the band forward (gradients reach ``U`` and ``V`` only), so the evaluated matrix is
        the one trained, as in the polish phase of ``from_dense``.
        """
        if self.bands_frozen:
            return
        if progress < FREEZE_AT:
            self.project_widths_()
            self.sigma.fill_(TRAIN_SIGMA[0] + (TRAIN_SIGMA[1] - TRAIN_SIGMA[0]) * progress / FREEZE_AT)
        else:
            self.project_widths_()
            self.snap_widths_()
            self.bands_frozen = True

    @torch.no_grad()
    def snap_widths_(self, macs: float | None = None) -> None:
        """Set every width to a whole number of tiles, spending the budget the hard masks'
        flooring would waste: floor each, then add one tile to the widths with the largest
        remainders while the cap (default ``budget_rank (m + n)``) allows. Flooring alone
        drops about half a tile per band (12% of the MACs at ``n = 576``); call it before
        freezing bands, as ``from_dense`` does before its polish phase."""
        n, m, rc = self.in_features, self.out_features, self.component_rank
        limit = float(self.budget_rank * (m + n) if macs is None else macs)
        sides = [(self.width_in, tile_count(n), n), (self.width_out, tile_count(m), m)]
        scaled = torch.cat([w.clamp(0, 1) * tiles for w, tiles, _ in sides], -1)
        base = torch.floor(scaled + 1e-6)
        step = torch.cat([torch.full_like(w, rc * length / tiles) for w, tiles, length in sides], -1)
        for row_scaled, row_base, row_step in zip(scaled.reshape(-1, scaled.shape[-1]), base.view(-1, base.shape[-1]),
                                                  step.reshape(-1, step.shape[-1])):  # each member of a stack
            spent = float((row_base * row_step).sum())
            for i in torch.argsort(row_scaled - row_base, descending=True, stable=True).tolist():
                if row_base[i] < row_scaled[i].ceil() and spent + float(row_step[i]) <= limit:
                    row_base[i] += 1
                    spent += float(row_step[i])
        k = self.components
        self.width_in.copy_(base[..., :k] / sides[0][1])
        self.width_out.copy_(base[..., k:] / sides[1][1])

    def _project(
        self,
        weight: torch.Tensor,
        *,
        steps: int = 200,
        polish: int = POLISH,
        lr: float = 1e-2,
        sigma: tuple[float, float] = (4.0, 32.0),
        shrink: float = 0.6,
        tol: float = TOL,
        seed: int = 0,
        progress: ProgressFn | None = None,
    ) -> Trace:
        """SVD components at full width, then Adam on ``||What - W||^2 / ||W||^2`` (each member of a
        stacked module on its own matrix, all from the same seeded start).

        Phase 1 (``steps``, a schedule, not a fit to convergence): soft masks with ``sigma``
        annealed from ``sigma[0]`` to ``sigma[1]``; after each step ``project_widths_`` onto a
        cap that tightens linearly from "every band full" to ``budget_rank (m + n)`` over the
        first ``shrink`` of the steps, so locations can move while bands narrow (projecting
        straight onto the budget would cut every band where it started); then ``snap_widths_``
        onto the tile grid. Initial locations are drawn from ``seed`` (they matter once bands
        shrink; at width 1 the mask is 1 everywhere). Phase 2 (polish): bands frozen as hard
        boxcars, Adam on ``U`` and ``V`` alone until the error stalls (``tol``) or ``polish``
        steps, keeping the best iterate, so the evaluated matrix is the one optimised.
        ``progress(i, rel_error)`` after every step of both phases (soft-mask error in phase 1,
        the hard-mask error in phase 2).
        """
        check_positive_int("steps", steps, self.family)
        check_stop("polish", polish, tol, self.family)
        k, rc, m, n = self.components, self.component_rank, self.out_features, self.in_features
        u, v = svd_factors(weight, min(k * rc, m, n))
        self.U.zero_().flatten(-2)[..., : u.shape[-1]].copy_(u)
        self.V.zero_().flatten(-3, -2)[..., : v.shape[-2], :].copy_(v)
        self.width_in.fill_(1.0)
        self.width_out.fill_(1.0)
        self.bands_frozen = False
        gen = torch.Generator().manual_seed(seed)
        self.loc_in.copy_(torch.rand(k, generator=gen, dtype=torch.float64))
        self.loc_out.copy_(torch.rand(k, generator=gen, dtype=torch.float64))
        was_training = self.training
        target = weight.to(self.U.dtype)
        norm2 = target.square().sum((-2, -1)).clamp_min(torch.finfo(target.dtype).tiny)  # a zero W: loss 0, not 0/0

        def loss() -> torch.Tensor:
            value = (self.to_dense() - target).square().sum((-2, -1)) / norm2
            value.sum().backward()  # every member's gradient is its own loss's
            return value.detach()

        full = k * rc * (m + n)
        cap = float(self.budget_rank * (m + n))
        self.train()
        params = [self.U, self.V, self.width_in, self.width_out, self.loc_in, self.loc_out]
        opt = Adam(params, [lr] * len(params))
        everyone = torch.ones(len(norm2), dtype=torch.bool, device=norm2.device)
        with torch.enable_grad():
            for step in range(steps):
                self.sigma.fill_(sigma[0] + (sigma[1] - sigma[0]) * step / max(1, steps - 1))
                for p in params:
                    p.grad = None
                value = loss()
                opt.step(everyone)
                frac = min(1.0, (step + 1) / max(1.0, shrink * steps))
                self.project_widths_(full + (cap - full) * frac)
                if progress is not None:
                    progress(step + 1, math.sqrt(float(value.max())))
        self.snap_widths_()
        self.bands_frozen = True
        polished = minimise([self.U, self.V], loss, [lr, lr], Stop(polish, tol),
                            progress=None if progress is None else lambda i, error: progress(steps + i, error))
        for p in params:
            p.grad = None
        self.train(was_training)
        return Trace(polished.steps + steps, polished.converged)
