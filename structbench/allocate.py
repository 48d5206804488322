"""A model-level parameter budget: one family's hyperparameters for each targeted matrix, such
that their kept parameters together are within ``TOLERANCE`` of ``rho`` times their dense ones.

``hparams_for`` meets ``rho`` one matrix at a time and can only land below it, by as much as
the family's discrete structure forces: a block count must divide the shape, so Monarch keeps
``2/b`` of a square matrix and block-diagonal ``1/b``, and CR 10 % and 20 % give one model.
The allocator mixes the family's own structures across the matrices instead:

1. Every matrix takes the family's per-matrix choice at ``rho``. If the total is within
   tolerance (every rank-based family: its steps are one rank), that uniform allocation is
   the answer, the same hyperparameters as swapping each layer at ``rho``.
2. Otherwise matrices move one step at a time along their shape's ladder
   (``StructuredLinear.hparam_options``: the structures the family's rule picks at some
   ``rho``, none keeping more than the dense matrix) towards the budget, as long as a step
   brings the total closer to it. Each step is the one that grows the spread
   ``sum_i size_i (rho_i - rho)^2`` least per parameter it moves, so that every matrix stays
   as near ``rho`` as the budget allows; ties go to the matrix listed first (in a decoder,
   the earlier layer).
3. If that stops outside tolerance (some matrix's step is wider than the tolerance window),
   an exact search over every mix decides: the mix nearest the budget within tolerance, or
   none, and then the family cannot meet the budget on these shapes.

A budget the family cannot meet raises ``NotApplicable`` (a skipped case) saying what the family can keep,
so that a suite's row is skipped with that reason instead of measured at another CR.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Mapping

from structbench.errors import NotApplicable, StructbenchError
from structbench.families import get_family
from structbench.structured import Fit, StructuredLinear, check_rho

TOLERANCE = 0.01
"""How far the achieved kept fraction may sit from ``rho``, either way: one point of CR."""

Shape = tuple[int, int]
"""A matrix's ``(out_features, in_features)``."""


@dataclass(frozen=True)
class Allocation:
    """The per-matrix structures of one family meeting a budget over all of them together."""

    family: str
    rho: float
    """The target: the kept fraction of the matrices' dense parameters, all together."""
    fits: dict[str, Fit]
    """Per matrix name, its hyperparameters and the fraction of that matrix they keep."""
    params: int
    """Effective parameters the structures keep (what ``rho`` budgets)."""
    dense_params: int
    uniform: bool
    """Whether every matrix has the family's per-matrix choice at ``rho`` (no mix)."""

    @property
    def rho_actual(self) -> float:
        return self.params / self.dense_params

    @property
    def hparams(self) -> dict[str, dict[str, Any]]:
        """Per matrix name, the hyperparameters to build it with (``swap_linears(hparams=)``)."""
        return {name: fit.hparams for name, fit in self.fits.items()}


def allocate(family: str, shapes: Mapping[str, Shape], rho: float, tolerance: float = TOLERANCE) -> Allocation:
    """Hyperparameters of ``family`` for each named ``(out, in)`` matrix keeping ``rho`` of
    their dense parameters together, within ``tolerance``; see the module docstring for how."""
    cls: type[StructuredLinear] = get_family(family)
    rho = check_rho(rho)
    if not shapes:
        raise StructbenchError(f"{family}: no matrices to allocate a budget over")
    names = list(shapes)
    sizes = [m * n for m, n in shapes.values()]
    dense = sum(sizes)
    goal, window = rho * dense, tolerance * dense
    rule = {shape: _rule(cls, shape, rho) for shape in dict.fromkeys(shapes.values())}  # in order of appearance
    picks = [rule[shapes[name]] for name in names]
    if all(pick is not None for pick in picks):
        kept = sum(cls.effective_params(*shapes[name], **fit.hparams) for name, fit in zip(names, picks))
        if abs(kept - goal) <= window:
            return Allocation(family, rho, dict(zip(names, picks)), kept, dense, uniform=True)

    options = {shape: cls.hparam_options(*shape) for shape in rule}
    counts = {shape: [cls.effective_params(*shape, **fit.hparams) for fit in fits] for shape, fits in options.items()}
    for shape, fits in options.items():
        if not fits:
            raise NotApplicable(f"{family} has no structure for a {_name(shape)} matrix at any rho")
    ladders = [counts[shapes[name]] for name in names]
    _check_range(family, rho, tolerance, shapes, counts, goal, window, dense)
    # start each matrix at its ladder's largest structure within rho of its own size (the lowest if none)
    chosen = [max(bisect.bisect_right(ladder, rho * size) - 1, 0) for ladder, size in zip(ladders, sizes)]
    kept = _rebalance(ladders, sizes, chosen, goal, rho)
    if abs(kept - goal) > window:
        exact = _exact(ladders, goal, window)
        if exact is None:
            steps = ", ".join(f"{_name(s)} {', '.join(f'{p / (s[0] * s[1]):.1%}' for p in counts[s])}" for s in counts)
            raise NotApplicable(
                f"{family}: no mix of its structures keeps {rho:.1%} ± {tolerance:.1%} (CR {1 - rho:.0%}) of these "
                f"{len(names)} matrices' dense parameters; the nearest found keeps {kept / dense:.1%} "
                f"(per shape it keeps {steps})")
        chosen = exact
        kept = sum(ladder[j] for ladder, j in zip(ladders, chosen))
    fits = {name: options[shapes[name]][j] for name, j in zip(names, chosen)}
    uniform = all(pick is not None and fits[name].hparams == pick.hparams for name, pick in zip(names, picks))
    return Allocation(family, rho, fits, kept, dense, uniform)


def _rule(cls: type[StructuredLinear], shape: Shape, rho: float) -> Fit | None:
    """The family's own per-matrix choice at ``rho``, or None where it has none."""
    try:
        return cls.hparams_for(*shape, rho)
    except (NotApplicable, StructbenchError):
        return None


def _name(shape: Shape) -> str:
    return f"{shape[0]}x{shape[1]}"


def _check_range(family: str, rho: float, tolerance: float, shapes: Mapping[str, Shape],
                 counts: dict[Shape, list[int]], goal: float, window: float, dense: int) -> None:
    """Refuse a budget outside what every matrix at its smallest, or at its largest, keeps."""
    ends = [(counts[shape][0], counts[shape][-1]) for shape in shapes.values()]
    low, high = sum(e[0] for e in ends), sum(e[1] for e in ends)
    wanted = f"{rho:.1%} ± {tolerance:.1%} (CR {1 - rho:.0%}) of these {len(shapes)} matrices' dense parameters"
    if high < goal - window:
        per = ", ".join(f"{_name(s)} {c[-1] / (s[0] * s[1]):.1%}" for s, c in counts.items())
        raise NotApplicable(f"{family} cannot keep {wanted}: at most {high / dense:.1%}, every matrix at its "
                               f"largest structure not above the dense matrix ({per})")
    if low > goal + window:
        per = ", ".join(f"{_name(s)} {c[0] / (s[0] * s[1]):.1%}" for s, c in counts.items())
        raise NotApplicable(f"{family} cannot keep {wanted}: at least {low / dense:.1%}, every matrix at its "
                               f"smallest structure ({per})")


def _rebalance(ladders: list[list[int]], sizes: list[int], chosen: list[int], goal: float, rho: float) -> int:
    """Step ``chosen`` (indices into each matrix's ladder, updated in place) towards ``goal``
    while a step brings the total closer; returns the total kept."""
    kept = sum(ladder[j] for ladder, j in zip(ladders, chosen))
    while True:
        gap = goal - kept
        way = 1 if gap > 0 else -1
        best: tuple[float, int, int] | None = None
        for k, (ladder, size) in enumerate(zip(ladders, sizes)):
            j = chosen[k] + way
            if not 0 <= j < len(ladder):
                continue
            step = ladder[j] - ladder[chosen[k]]
            if abs(gap - step) >= abs(gap):
                continue
            share = rho * size
            growth = ((ladder[j] - share) ** 2 - (ladder[chosen[k]] - share) ** 2) / (size * abs(step))
            if best is None or growth < best[0]:
                best = (growth, k, step)
        if best is None:
            return kept
        _, k, step = best
        chosen[k] += way
        kept += step


def _exact(ladders: list[list[int]], goal: float, window: float) -> list[int] | None:
    """Ladder indices of the mix nearest ``goal`` among those within ``window`` of it, or None.

    Dynamic programming over the distinct partial totals, matrix by matrix, keeping only
    totals from which the remaining matrices can still end inside the window."""
    low_rest, high_rest = [0], [0]
    for ladder in reversed(ladders):
        low_rest.insert(0, low_rest[0] + ladder[0])
        high_rest.insert(0, high_rest[0] + ladder[-1])
    stages: list[dict[int, tuple[int, int]]] = []
    reach: dict[int, Any] = {0: None}
    for k, ladder in enumerate(ladders):
        nxt: dict[int, tuple[int, int]] = {}
        for total in reach:
            for j, params in enumerate(ladder):
                t = total + params
                if t not in nxt and t + low_rest[k + 1] <= goal + window and t + high_rest[k + 1] >= goal - window:
                    nxt[t] = (total, j)
        if not nxt:
            return None
        stages.append(nxt)
        reach = nxt
    total = min(reach, key=lambda t: (abs(t - goal), t))
    chosen = []
    for stage in reversed(stages):
        total, j = stage[total]
        chosen.append(j)
    return chosen[::-1]
