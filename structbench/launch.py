"""Running one suite for the command line, from options it has already checked: the run
folder (new, or reopened by ``--resume``), where the cases run, signals, publishing, and the
closing summary with the exit status.

Everything a start could refuse is checked before the run folder is made, so a refused start
leaves nothing behind; once cases run, an interrupted or failed run is still published.
"""
from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from structbench.cache import cache_root
from structbench.config import resolve
from structbench.errors import StructbenchError, writable
from structbench.publish import publish, summary
from structbench.results import RunData, RunWriter, list_runs, load_run, results_root
from structbench.runner import run_suite
from structbench.suite import RunContext, Suite
from suites import SUITES

if TYPE_CHECKING:
    from structbench.ray_executor import RayExecutor


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (the run is marked ``interrupted`` and published), exit 143."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass(frozen=True)
class Placement:
    """Where the cases run: here one after another (``serial``), or on Ray: a running
    cluster at ``address``, else a local instance of ``workers`` CPUs (default: all cores)."""

    executor: str = "serial"
    address: str | None = None
    workers: int | None = None


def start(suite: Suite, config: dict[str, Any], options: dict[str, Any], out: Path, placement: Placement) -> int:
    """A new run of ``suite`` under ``out`` with the resolved ``config`` and the CLI
    ``options`` stored in ``run.json``; the exit status."""
    executor = _executor(placement)
    writer = _open(lambda: RunWriter.create(out, suite, config, options, options["seed"]), out, executor)
    return _drive(suite, writer, config, executor)


def find_run(resume: str, suite: Suite | None, out: Path) -> RunData:
    """The run ``--resume`` names, read but not yet reopened: a folder, or with ``latest`` the
    newest unfinished run of ``suite`` under ``out``."""
    if resume == "latest":
        if suite is None:
            raise StructbenchError("--resume without a run folder needs --suite NAME")
        for run in list_runs(out, warn=_warn):
            if run.suite == suite.name and run.meta.get("status") != "complete":
                return run
        raise StructbenchError(f"--resume: no unfinished {suite.name} run under {out}")
    run = load_run(resume)
    if suite is not None and run.suite != suite.name:
        raise StructbenchError(f"--resume {resume} is a {run.suite} run, not {suite.name}")
    return run


def resume(run: RunData, threads: int | None, placement: Placement) -> int:
    """Continue ``run`` with its stored options (``threads``, if given, replacing its thread
    count); the exit status."""
    suite = SUITES.get(run.suite)
    executor = _executor(placement)
    writer = _open(lambda: RunWriter.reopen(run.run_dir, suite, warn=_warn), run.run_dir, executor)
    config, cli = writer.meta["config"], writer.meta["cli"]
    if "quick" in config:  # a schema 1 run stored the config with its overlay unapplied
        config = writer.meta["config"] = resolve(suite.name, config, suite.validate, quick=cli["quick"])
    if threads is not None and threads != cli["threads"]:
        # Threads change speed, not results: a run resumed on a busier machine may need
        # fewer. The change is recorded and said, since timings differ across it.
        _warn(f"resuming with --threads {threads} (the run started with {cli['threads']}; "
              "timings before and after are not comparable)")
        writer.meta.setdefault("threads_changed", []).append(
            {"at": writer.meta["resumed"][-1], "from": cli["threads"], "to": threads})
        cli["threads"] = threads
    return _drive(suite, writer, config, executor)


def _executor(placement: Placement) -> RayExecutor | None:
    if placement.executor != "ray":
        return None
    from structbench.ray_executor import RayExecutor

    return RayExecutor(placement.address, placement.workers)


def _open(make: Callable[[], RunWriter], target: Path, executor: RayExecutor | None) -> RunWriter:
    """The run folder ``make`` creates or reopens, or one line naming the path that cannot be
    written (a Ray instance started for the run is stopped again)."""
    try:
        with writable("--out", target):
            return make()
    except BaseException:
        if executor is not None:
            executor.close()
        raise


def _drive(suite: Suite, writer: RunWriter, config: dict[str, Any], executor: RayExecutor | None) -> int:
    """Run the cases, publish whatever finished (also after Ctrl-C, SIGTERM or a failure),
    print the summary; 1 when no case finished ``ok``."""
    cli = writer.meta["cli"]
    torch.set_num_threads(cli["threads"])
    ctx = RunContext(device=cli["device"], dtype=cli["dtype"], threads=cli["threads"], seed=cli["seed"],
                     quick=cli["quick"], run_dir=writer.run_dir, cache_dir=cache_root(), config=config,
                     retry_noisy=cli.get("retry_noisy", 0))
    root = results_root(writer.run_dir)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        run_suite(suite, writer, ctx, executor)
    finally:  # an interrupted or failed run still gets tables and a report of what it finished
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not stop the publishing
        try:
            _publish_uninterrupted(writer.run_dir)
        finally:
            signal.signal(signal.SIGTERM, previous)
            writer.close()
    run = load_run(writer.run_dir)
    print(summary(run))
    if (run.meta.get("reliability") or {}).get("unreliable"):
        _warn("warning: this run is marked unreliable: " + "; ".join(run.meta["reliability"]["reasons"]))
    print(f"results: {writer.run_dir}  (table.md, table.csv, report.html; index: {root / 'index.html'})")
    if not any(row.get("status") == "ok" for row in run.rows):
        _warn("error: no case finished ok (see the reasons above)")
        return 1
    return 0


def _publish_uninterrupted(run_dir: Path) -> None:
    """Tables, report and index, with Ctrl-C held off: a second Ctrl-C while the first one's
    report is written must not leave the run without one."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        publish([run_dir])
    except OSError as err:
        raise StructbenchError(f"cannot write the tables or report of {run_dir} ({err.filename or ''}: "
                               f"{err.strerror or err}); its rows are kept in rows.jsonl: rebuild them with "
                               "'bench.py report' once there is room") from None
    finally:
        signal.signal(signal.SIGINT, previous)
