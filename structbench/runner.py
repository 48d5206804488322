"""Runs a suite: expand cases, skip finished ones on resume, run the rest with progress.

A case that raises is recorded as an ``error`` row and the run goes on, so one bad
configuration does not cost hours of finished measurements; Ctrl-C marks the run
``interrupted`` with every finished row kept, ready for ``--resume``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from tqdm import tqdm

from structbench.cases import run_one
from structbench.estimate import Estimate, duration
from structbench.results import REFERENCE, RunWriter, list_runs, now, results_root
from structbench.suite import RunContext, Suite, case_key, shard_of



def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


SERIAL = {"name": "serial", "workers": 1}  # what run.json records of a run without an executor


class Executor(Protocol):
    """Somewhere else to run cases (``structbench.ray_executor``): ``start`` reaches the workers
    and describes them for run.json (``name``, ``workers``, ...); ``run`` takes groups of cases
    and hands rows back to ``finished`` as each group ends, the driver writing them."""

    def start(self) -> dict[str, Any]: ...

    def run(self, suite: Suite, ctx: RunContext, groups: list[list[dict[str, Any]]], rows: list[dict[str, Any]],
            finished: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None]) -> None: ...


def run_suite(suite: Suite, writer: RunWriter, ctx: RunContext, executor: Executor | None = None) -> Path:
    """Run every case not finished yet, here (``executor`` None) or on an executor; the run's
    status ends ``complete``, ``interrupted`` (Ctrl-C) or ``failed`` (an error outside any
    case), every finished row kept in all three."""
    try:
        _run_cases(suite, writer, ctx, executor)
    except KeyboardInterrupt:
        writer.note_inputs(suite)
        writer.finish("interrupted")
        _log(f"interrupted: {writer.meta['n_done']}/{writer.meta['n_cases']} cases kept; resume with --resume {writer.run_dir}")
        raise
    except BaseException:
        writer.finish("failed")
        raise
    writer.note_inputs(suite)
    writer.judge(suite)  # reasons go to run.json; the CLI prints them once, after the summary
    writer.finish("complete")
    return writer.run_dir


def _run_cases(suite: Suite, writer: RunWriter, ctx: RunContext, executor: Executor | None) -> None:
    cases = suite.expand(ctx.config)
    shard = writer.meta.get("cli", {}).get("shard")
    if shard:  # --shard I/N: a deterministic part of the cases, for other machines to run the rest
        index, count = shard
        writer.meta["n_cases_whole"] = len(cases)  # the whole run's, for the merge of its shards
        cases = [c for c in cases if shard_of(c, suite.schema.shard_keys, count) == index]
    _note_executor(writer, executor.start() if executor is not None else SERIAL)
    ctx.rows = writer.rows  # the live list: each case sees the rows of those before it
    ctx.log = _log  # suite messages go through the bar's writer, never glued onto the bar
    done = writer.done_keys()
    todo = [c for c in cases if case_key(c) not in done]
    writer.meta["n_cases"] = len(cases)
    _log(f"{suite.name}: {len(cases)} cases, {len(cases) - len(todo)} already done -> {writer.run_dir}")
    if suite.phases is not None and todo:
        _log("phases: " + ", ".join(f"{name} {count}" for name, count in suite.phases(todo).items()))
    estimate, started = Estimate(todo, suite.schema.cost_keys, prior_rows(writer, suite.name)), time.monotonic()
    checkpoints = sorted({max(1, round(share * len(todo))) for share in CHECKPOINTS}) if todo else []
    writer.meta["estimates"] = []
    if todo:
        _checkpoint(writer, estimate, 0, len(todo), 0.0)
    # A terminal gets the bar; a log file or pipe gets one line per finished case instead.
    tty = sys.stderr.isatty()
    with tqdm(total=len(cases), initial=len(cases) - len(todo), unit="case", file=sys.stderr, dynamic_ncols=True,
              disable=not tty) as bar:

        count = len(cases) - len(todo)  # the bar's own count stays 0 while it is disabled

        def finished(group: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
            nonlocal count
            for case in group:
                mine = [r for r in rows if r["case_key"] == case_key(case)]
                estimate.finished(case, float(mine[0].get("case_seconds") or 0.0) if mine else 0.0)
            writer.append(rows)  # the driver is the only writer, whoever ran the case
            bar.update(len(group))
            for case in group:
                count += 1
                ran = count - (len(cases) - len(todo))
                if not tty:
                    mine = [r for r in rows if r["case_key"] == case_key(case)]
                    statuses = ", ".join(sorted({str(r["status"]) for r in mine}))
                    seconds = mine[0]["case_seconds"] if mine else 0.0
                    _log(f"[{count}/{len(cases)}] {_label(suite, case)}: {statuses} ({seconds:.1f} s; "
                         f"{duration(time.monotonic() - started)} so far, {estimate.text()})")
                if ran in checkpoints and ran < len(todo):
                    _checkpoint(writer, estimate, ran, len(todo), time.monotonic() - started)

        try:
            if executor is None:
                for case in todo:
                    bar.set_postfix_str(" | ".join(filter(None, [_label(suite, case)[:60], estimate.text()])))
                    finished([case], run_one(suite, case, ctx))
            else:
                executor.run(suite, ctx, groups(suite, todo), writer.rows, finished)
        finally:  # what the estimates are set against at the end
            writer.meta["session_s"] = round(time.monotonic() - started, 1)


def _note_executor(writer: RunWriter, used: dict[str, Any]) -> None:
    """Where this session's cases run (``executor``); a resume on another executor or worker
    count is recorded (``executor_changed``), as the rows before and after were not run alike."""
    before = writer.meta.get("executor")
    if before is not None and before != used:
        writer.meta.setdefault("executor_changed", []).append({"at": now(), "from": before, "to": used})
    writer.meta["executor"] = used


CHECKPOINTS = (0.1, 0.5)
"""Shares of a session's cases after which the estimated total is printed and stored."""


def prior_rows(writer: RunWriter, suite: str) -> list[dict[str, Any]]:
    """The stored timings a session prices its cases with before they run: this run's rows from
    earlier sessions, and the rows of every other stored run of the suite (the reference runs
    and the user's, under the same results root) made on the same device with the same threads
    and size (``--quick`` or not), of the same model where the config names one."""
    cli, model = writer.meta.get("cli") or {}, (writer.meta.get("config") or {}).get("model")
    root, here = results_root(writer.run_dir), writer.run_dir.resolve()
    rows = list(writer.rows)
    for base in (root, root / REFERENCE):
        for run in list_runs(base):
            other = run.meta.get("cli") or {}
            if (run.suite == suite and run.run_dir.resolve() != here
                    and (run.meta.get("config") or {}).get("model") == model
                    and all(other.get(k) == cli.get(k) for k in ("device", "threads", "quick"))):
                rows += run.rows
    return rows


def _checkpoint(writer: RunWriter, estimate: Estimate, ran: int, todo: int, elapsed: float) -> None:
    """The estimated total at this point (before the first case from stored timings, if any),
    printed and kept in ``run.json`` (``estimates``), so the end of the run can set it against
    the measured time."""
    found = estimate.remaining()
    if found is None:
        if ran == 0:
            _log("estimated total: none yet (no stored run of this suite has timings of these kinds on this "
                 "device and thread count); the first comes after the first case")
        return
    left, stored, unseen = found
    writer.meta["estimates"].append({"cases_run": ran, "of": todo, "elapsed_s": round(elapsed, 1),
                                     "total_s": round(elapsed + left, 1), "stored": stored, "unseen": unseen})
    when = "before the first case" if ran == 0 else f"{ran} of {todo} cases run in {duration(elapsed)}"
    _log(f"{when}: estimated total {duration(elapsed + left)} ({estimate.text()})")


def _label(suite: Suite, case: dict[str, Any]) -> str:
    """The case's fields by name where a bare value would not say what it is: ``blast
    rho=0.8 calibrated retrained``; a false flag and a missing field are left out."""
    words = []
    for key in suite.schema.case_keys:
        value = case.get(key)
        if value is None or value is False:
            continue
        if value is True:
            words.append(key)
        elif isinstance(value, (int, float)) and key != "family":
            words.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
        else:
            words.append(str(value))
    return " ".join(words)


def groups(suite: Suite, cases: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Cases that must run in order in one place (same ``shard_keys`` values: approx's GD sweep
    and the cases reading it), in expand order; every case on its own otherwise."""
    if not suite.schema.shard_keys:
        return [[case] for case in cases]
    found: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        found.setdefault(case_key({k: case.get(k) for k in suite.schema.shard_keys}), []).append(case)
    return list(found.values())
