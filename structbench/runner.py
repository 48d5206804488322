"""Runs a suite: expand cases, skip finished ones on resume, run the rest with progress.

A case that raises is recorded as an ``error`` row and the run goes on, so one bad
configuration does not cost hours of finished measurements; Ctrl-C marks the run
``interrupted`` with every finished row kept, ready for ``--resume``.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

from tqdm import tqdm

from structbench.errors import StructbenchError
from structbench.results import RunWriter
from structbench.suite import RunContext, Suite, case_key, shard_of



def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def run_suite(suite: Suite, writer: RunWriter, ctx: RunContext) -> Path:
    """Run every case not finished yet; the run's status ends ``complete``, ``interrupted``
    (Ctrl-C) or ``failed`` (an error outside any case), every finished row kept in all three."""
    try:
        _run_cases(suite, writer, ctx)
    except KeyboardInterrupt:
        writer.finish("interrupted")
        _log(f"interrupted: {writer.meta['n_done']}/{writer.meta['n_cases']} cases kept; resume with --resume {writer.run_dir}")
        raise
    except BaseException:
        writer.finish("failed")
        raise
    for reason in writer.judge(suite):
        _log(f"unreliable: {reason}")
    writer.finish("complete")
    return writer.run_dir


def _run_cases(suite: Suite, writer: RunWriter, ctx: RunContext) -> None:
    cases = suite.expand(ctx.config)
    shard = writer.meta.get("cli", {}).get("shard")
    if shard:  # --shard I/N: a deterministic part of the cases, for other machines to run the rest
        index, count = shard
        cases = [c for c in cases if shard_of(c, suite.schema.shard_keys, count) == index]
    ctx.rows = writer.rows  # the live list: each case sees the rows of those before it
    ctx.log = _log  # suite messages go through the bar's writer, never glued onto the bar
    done = writer.done_keys()
    todo = [c for c in cases if case_key(c) not in done]
    writer.meta["n_cases"] = len(cases)
    _log(f"{suite.name}: {len(cases)} cases, {len(cases) - len(todo)} already done -> {writer.run_dir}")
    # A terminal gets the bar; a log file or pipe gets one line per finished case instead.
    tty = sys.stderr.isatty()
    with tqdm(total=len(cases), initial=len(cases) - len(todo), unit="case", file=sys.stderr, dynamic_ncols=True,
              disable=not tty) as bar:
        for n, case in enumerate(todo, start=len(cases) - len(todo) + 1):
            key = case_key(case)
            label = " ".join(str(case[k]) for k in suite.schema.case_keys if k in case)
            bar.set_postfix_str(label[:60])
            start = time.perf_counter()
            load = os.getloadavg()[0]
            try:
                rows = suite.run_case(case, ctx)
            except StructbenchError as err:
                rows = [{"status": "skipped", "reason": str(err)}]
            except Exception as err:  # noqa: BLE001 - recorded with its traceback, run goes on
                rows = [{"status": "error", "reason": f"{type(err).__name__}: {err}"}]
                _log(f"error in case {key}:\n{traceback.format_exc()}")
            elapsed = time.perf_counter() - start
            machine = {"load_start": load, "load_end": os.getloadavg()[0]}  # 1-minute load averages
            writer.append([{**case, "status": "ok", "reason": None, **row, "case_key": key, "case_seconds": elapsed,
                            **machine} for row in rows])
            bar.update(1)
            if not tty:
                statuses = ", ".join(sorted({str(r.get("status", "ok")) for r in rows}))
                _log(f"[{n}/{len(cases)}] {label}: {statuses} ({elapsed:.1f} s)")
