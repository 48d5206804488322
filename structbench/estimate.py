"""How long the rest of a run will take, from the cases it has finished.

Cases of one suite differ in cost by orders of magnitude (a Kronecker sum against low-rank, a
re-trained model against a projected one), so a single mean per case misleads. The suite's
``Schema.cost_keys`` name the case fields that decide a case's cost; a case is priced at the
mean of the finished cases that share those fields with it, and a kind nothing has finished
yet at the mean of every finished case (said in the text, so a reader knows the estimate is
rough until every kind has run once). No prior cost model is guessed: the first estimate
comes after the first case.
"""
from __future__ import annotations

import statistics
from collections import Counter
from typing import Any, Hashable, Sequence


def duration(seconds: float) -> str:
    """``42 s``, ``13 min``, ``2.4 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Estimate:
    """The time left of the cases still to run, priced by kind as they finish."""

    def __init__(self, todo: Sequence[dict[str, Any]], cost_keys: Sequence[str]) -> None:
        self.cost_keys = tuple(cost_keys)
        self.left: Counter[Hashable] = Counter(self.kind(case) for case in todo)
        self.seconds: dict[Hashable, list[float]] = {}

    def kind(self, case: dict[str, Any]) -> Hashable:
        return tuple(str(case.get(k)) for k in self.cost_keys)

    def finished(self, case: dict[str, Any], seconds: float) -> None:
        kind = self.kind(case)
        self.left[kind] -= 1
        self.seconds.setdefault(kind, []).append(seconds)

    def remaining(self) -> tuple[float, int] | None:
        """Seconds left, and how many of the cases left are of a kind none has finished yet
        (priced at the overall mean); None before any case has finished."""
        done = [s for values in self.seconds.values() for s in values]
        if not done:
            return None
        overall = statistics.fmean(done)
        unseen = sum(n for kind, n in self.left.items() if n > 0 and kind not in self.seconds)
        total = sum(n * (statistics.fmean(self.seconds[kind]) if kind in self.seconds else overall)
                    for kind, n in self.left.items() if n > 0)
        return total, unseen

    def text(self) -> str:
        """``~34 min left`` (with how rough it is), or empty before the first case ends."""
        found = self.remaining()
        if found is None:
            return ""
        seconds, unseen = found
        rough = f", {unseen} of them of kinds not run yet, priced at the mean" if unseen else ""
        return f"~{duration(seconds)} left{rough}"
