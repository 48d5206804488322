"""Running one case into the rows a run stores, the same in the driver and on a Ray worker.

A case that raises ``NotApplicable`` is a ``skipped`` row with its reason; any other exception
(``StructbenchError`` included: a model that cannot load, a missing package or data file) is an
``error`` row with its traceback logged, so one bad case never stops a sweep and never passes
for a gap.
"""
from __future__ import annotations

import os
import time
import traceback
from typing import Any

from structbench.errors import NotApplicable
from structbench.suite import RunContext, Suite, case_key


def run_one(suite: Suite, case: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    """The stored rows of ``case``: its fields, ``status``/``reason``, the suite's columns, the
    case key, its wall time and the 1-minute load average around it."""
    key = case_key(case)
    start, load = time.perf_counter(), os.getloadavg()[0]
    try:
        rows = suite.run_case(case, ctx)
    except NotApplicable as err:
        rows = [{"status": "skipped", "reason": str(err)}]
    except Exception as err:  # noqa: BLE001 - recorded with its traceback, the run goes on
        rows = [{"status": "error", "reason": f"{type(err).__name__}: {err}"}]
        ctx.log(f"error in case {key}:\n{traceback.format_exc()}")
    elapsed = time.perf_counter() - start
    machine = {"load_start": load, "load_end": os.getloadavg()[0]}
    return [{**case, "status": "ok", "reason": None, **row, "case_key": key, "case_seconds": elapsed, **machine}
            for row in rows]
