"""How long the rest of a run will take: a cost model from stored timings, corrected by the
cases it finishes.

Cases of one suite differ in cost by orders of magnitude (a Kronecker sum against low-rank, a
re-trained model against a projected one), so a single mean per case misleads. The suite's
``Schema.cost_keys`` name the case fields that decide a case's cost, and a case is priced by
its kind:

1. at the mean of this session's finished cases of its kind, once there are any;
2. before that, at the median ``case_seconds`` of its kind in the ``prior`` rows: the run's own
   rows from earlier sessions and the rows of other stored runs of the suite on the same
   device, threads and size (``prior_rows``), so a run has an estimate before its first case;
3. a kind with neither, at the mean of the cases priced so far (said in the text, so a reader
   knows the estimate is rough until every kind has run once).

Nothing is guessed: with no stored timing at all the first estimate comes after the first case.
"""
from __future__ import annotations

import statistics
from collections import Counter
from typing import Any, Hashable, Iterable, Sequence


def duration(seconds: float) -> str:
    """``42 s``, ``13 min``, ``2.4 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Estimate:
    """The time left of the cases still to run, priced by kind from stored timings and from
    the cases as they finish."""

    def __init__(self, todo: Sequence[dict[str, Any]], cost_keys: Sequence[str],
                 prior: Iterable[dict[str, Any]] = ()) -> None:
        self.cost_keys = tuple(cost_keys)
        self.left: Counter[Hashable] = Counter(self.kind(case) for case in todo)
        self.seconds: dict[Hashable, list[float]] = {}
        stored: dict[Hashable, dict[str, float]] = {}
        for row in prior:  # one timing per case: a case's rows all carry its case_seconds
            if row.get("status") == "ok" and isinstance(row.get("case_seconds"), (int, float)):
                stored.setdefault(self.kind(row), {})[str(row.get("case_key"))] = float(row["case_seconds"])
        self.prior = {kind: statistics.median(by_case.values()) for kind, by_case in stored.items()}

    def kind(self, case: dict[str, Any]) -> Hashable:
        return tuple(str(case.get(k)) for k in self.cost_keys)

    def finished(self, case: dict[str, Any], seconds: float) -> None:
        kind = self.kind(case)
        self.left[kind] -= 1
        self.seconds.setdefault(kind, []).append(seconds)

    def remaining(self) -> tuple[float, int, int] | None:
        """Seconds left; how many of the cases left are priced from stored timings only; how
        many are of a kind with no timing at all (priced at the mean). None while nothing at all
        is known."""
        price = {kind: statistics.fmean(values) for kind, values in self.seconds.items()}
        stored_only = {kind: s for kind, s in self.prior.items() if kind not in price}
        known = {**stored_only, **price}
        if not known:
            return None
        fallback = statistics.fmean(known.values())
        left = {kind: n for kind, n in self.left.items() if n > 0}
        total = sum(n * known.get(kind, fallback) for kind, n in left.items())
        return (total, sum(n for kind, n in left.items() if kind in stored_only),
                sum(n for kind, n in left.items() if kind not in known))

    def text(self) -> str:
        """``~34 min left`` (with how much of it comes from stored timings, and how rough it
        is), or empty while nothing is known."""
        found = self.remaining()
        if found is None:
            return ""
        seconds, stored, unseen = found
        notes = [f"{stored} priced from stored runs" if stored else "",
                 f"{unseen} of kinds not run yet, priced at the mean" if unseen else ""]
        said = ", ".join(filter(None, notes))
        return f"~{duration(seconds)} left" + (f" ({said})" if said else "")
