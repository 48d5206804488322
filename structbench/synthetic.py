"""Seeded synthetic matrices with known structure, to see which family fits which structure.

Structured kinds are random members of a registered family (``registry.build`` then
``to_dense()``), so "a Monarch matrix" means exactly what ``matrices/monarch.py``
implements and there is one definition of each structure. Kinds without a family of
their own (noise, block low-rank with independent blocks, a power-law spectrum) are
built here. Every matrix is scaled to unit RMS entry, so errors and iterative
projections see the same scale whatever the kind and size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from structbench.errors import NotApplicable, StructbenchError
from structbench.families import build, family_order, get_family, list_families

Maker = Callable[[int, int, torch.Generator, dict[str, Any]], torch.Tensor]

STRUCTURE_RHO = 0.2
"""Family kinds are drawn with the structure the family itself picks at this rho, so in the
approx suite's ``rho 0.2`` column each closed-form family recovers its own kind exactly
(BLAST up to PrecGD's convergence), and larger rhos show who captures it with room to spare."""


@dataclass(frozen=True)
class Kind:
    """One synthetic matrix kind: how to draw it and which of its parameters exist."""

    name: str
    description: str
    make: Maker
    defaults: dict[str, Any]
    family: str | None = None  # the family whose random members this kind is


def _normal(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def family_member(
    family: str, out_features: int, in_features: int, gen: torch.Generator, hparams: dict[str, Any]
) -> torch.Tensor:
    """Dense weight of a random member of ``family``: every parameter drawn i.i.d. N(0, 1).

    The module's own initialisation draws from the global RNG; it is forked so that
    making a matrix never changes the caller's random stream.
    """
    with torch.random.fork_rng(devices=[]):
        module = build(family, in_features, out_features, bias=False, **hparams).double()
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(_normal(tuple(param.shape), gen))
        return module.to_dense()


def _structure(family: str, m: int, n: int, params: dict[str, Any]) -> dict[str, Any]:
    """Explicit ``hparams`` if given, else the family's own choice at ``rho``."""
    if params.get("hparams"):
        return dict(params["hparams"])
    return get_family(family).hparams_for(m, n, params["rho"]).hparams


def _family_kind(family: str) -> Maker:
    def make(m: int, n: int, gen: torch.Generator, params: dict[str, Any]) -> torch.Tensor:
        return family_member(family, m, n, gen, _structure(family, m, n, params))

    return make


def _gaussian(m: int, n: int, gen: torch.Generator, params: dict[str, Any]) -> torch.Tensor:
    return _normal((m, n), gen)


def _lowrank_noise(m: int, n: int, gen: torch.Generator, params: dict[str, Any]) -> torch.Tensor:
    # Floored, so with the default 0.1 the signal fits the rank lowrank keeps at rho 0.2 on any shape.
    rank = max(1, int(params["rank_fraction"] * min(m, n)))
    signal = family_member("lowrank", m, n, gen, {"rank": rank})
    noise = _normal((m, n), gen)
    # ``params["noise"]`` is the noise-to-signal ratio in Frobenius norm, so the best
    # rank-r error is about noise / sqrt(1 + noise^2) whatever the shape.
    return signal + noise * (params["noise"] * signal.norm() / noise.norm())


def _block_lowrank(m: int, n: int, gen: torch.Generator, params: dict[str, Any]) -> torch.Tensor:
    blocks = params["blocks"]
    if m % blocks or n % blocks:
        raise NotApplicable(f"block-lowrank: blocks={blocks} must divide both dimensions of shape {m}x{n}")
    p, q = m // blocks, n // blocks
    rank = max(1, round(params["rank_fraction"] * min(p, q)))
    # Independent bases per block: unlike BLAST, nothing is shared along rows or columns.
    u = _normal((blocks, blocks, p, rank), gen)
    v = _normal((blocks, blocks, rank, q), gen)
    return (u @ v).permute(0, 2, 1, 3).reshape(m, n)


def _powerlaw(m: int, n: int, gen: torch.Generator, params: dict[str, Any]) -> torch.Tensor:
    k = min(m, n)
    u, _ = torch.linalg.qr(_normal((m, k), gen))
    v, _ = torch.linalg.qr(_normal((n, k), gen))
    spectrum = torch.arange(1, k + 1, dtype=torch.float64) ** (-float(params["alpha"]))
    return (u * spectrum) @ v.T


_NOISE = Kind("gaussian", "i.i.d. N(0,1) entries: no structure, the hardest case", _gaussian, {})
_LOWRANK_NOISE = Kind("lowrank-noise", "random rank-r matrix plus Gaussian noise (noise = noise/signal Frobenius ratio)",
                      _lowrank_noise, {"rank_fraction": 0.1, "noise": 0.1}, family="lowrank")
_BLOCK_LOWRANK = Kind("block-lowrank", "b x b grid of independent rank-r blocks (no shared bases)", _block_lowrank,
                      {"blocks": 4, "rank_fraction": 0.125})
_POWERLAW = Kind("powerlaw", "random singular vectors, singular values k^-alpha", _powerlaw, {"alpha": 1.0})


def kinds() -> dict[str, Kind]:
    """Every kind, by name: the unstructured ones, and a random-member kind for each registered
    family that declares ``synthetic_kind`` (in plot order), so a new family brings its own."""
    members = [Kind(family, f"random {family} family member (its structure at rho {STRUCTURE_RHO})",
                    _family_kind(family), {"rho": STRUCTURE_RHO}, family=family)
               for family in family_order() if get_family(family).synthetic_kind]
    return {kind.name: kind for kind in [_NOISE, _LOWRANK_NOISE, *members, _BLOCK_LOWRANK, _POWERLAW]}


def make_matrix(
    kind: str,
    out_features: int,
    in_features: int,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    **params: Any,
) -> torch.Tensor:
    """Draw an ``out_features x in_features`` matrix of ``kind``, scaled to unit RMS entry.

    ``params`` override the kind's defaults (``kinds()[kind].defaults``); family kinds
    also take ``hparams=`` to fix the structure instead of deriving it from ``rho``.
    The same ``(kind, shape, seed, params)`` always gives the same matrix: it is drawn
    in float64 from its own generator and cast at the end.
    """
    known = kinds()
    if kind not in known:
        raise StructbenchError(f"unknown synthetic kind {kind!r}; known: {', '.join(known)}")
    spec = known[kind]
    allowed = set(spec.defaults) | ({"hparams"} if spec.family else set())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise StructbenchError(f"synthetic kind {kind!r} has no parameter(s) {unknown}; known: {sorted(allowed)}")
    if spec.family is not None and spec.family not in list_families():
        raise StructbenchError(f"synthetic kind {kind!r} needs the {spec.family!r} family, which is not registered")
    gen = torch.Generator().manual_seed(int(seed))
    w = spec.make(out_features, in_features, gen, {**spec.defaults, **params})
    rms = w.norm() / math.sqrt(w.numel())
    return (w / rms).to(dtype)
