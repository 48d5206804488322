"""Run folders and the results schema, written so an interrupted run keeps what it did.

This module only stores; ``structbench.publish`` turns a stored run into tables and pages.
A run lives in ``<out>/<suite>/<run_id>/`` (``run_id = YYYYmmdd-HHMMSS-<device>-<commit>``):

- ``rows.jsonl``: one JSON row per line, appended and flushed as each case finishes;
  the only copy of the rows, and the source of truth for ``--resume``.
- ``run.json``: metadata only: schema version, suite name/version/description and its
  ``Schema`` (case keys, headline metrics, hidden columns, compare keys), the resolved
  config, the CLI options, git commit and dirty flag, environment, seed, start/finish
  times, status (``running``, ``complete``, ``interrupted``, ``failed``), case counts and
  metric metadata (unit, higher_is_better); rewritten atomically after every case.

Rows are flat dicts: the case's fields, ``case_key``, ``status`` (``ok``, ``skipped``,
``error``), ``reason`` and the suite's metrics, raw floats in SI units (seconds, bytes).
Schema 1 runs (rows copied into ``run.json``, no stored ``Schema``) still load; resuming
one stores the suite's current schema.

Both files are checked when read (``structbench.run_schema``): a run.json that does not fit
is refused with one line naming it and the field; a row line that is not a row, or repeats
a case, is left out and reported by line number, and ``--resume`` rewrites the file without
it (keeping the original).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import functools
import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from structbench.errors import StructbenchError
from structbench.provenance import changed_code, input_digests, versions
from structbench.run_schema import RESUME_CLI, ROW, RUN, problem, shown
from structbench.suite import Suite

SCHEMA_VERSION = 2
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_info() -> dict[str, Any]:
    """The commit and whether tracked code differs from it. ``results/`` is left out: it is
    data, and publishing a run rewrites the committed ``results/index.html``, which must not
    mark the next run dirty."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".",
                                                                     ":(exclude)results"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def collect_env() -> dict[str, Any]:
    """``torch.utils.collect_env`` facts (compilers, libc, lscpu, driver, cuDNN, pip
    packages): what a reader needs to reproduce a number. Slow (seconds), so once per process."""
    from torch.utils.collect_env import get_env_info

    try:
        return dict(get_env_info()._asdict())
    except Exception as err:  # noqa: BLE001 - a missing tool must not stop a benchmark
        return {"error": f"{type(err).__name__}: {err}"}


def environment(device: str, threads: int) -> dict[str, Any]:
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_model(),
        "cuda": torch.version.cuda,
        "mkl": torch.backends.mkl.is_available(),
        "interop_threads": torch.get_num_interop_threads(),
        "versions": versions(),
        "collect_env": collect_env(),
    }


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


ROWS_FILE = "rows.jsonl"


@dataclass
class RunData:
    """A stored run: ``meta`` is run.json (without the rows schema 1 copied into it), ``rows``
    the usable rows of rows.jsonl and ``problems`` the lines left out of them (``RowScan``)."""

    run_dir: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)

    @property
    def suite(self) -> str:
        return self.meta["suite"]["name"]

    @property
    def schema(self) -> dict[str, Any]:
        """The suite's ``Schema`` as stored; empty for a schema 1 run (nothing declared)."""
        return self.meta.get("schema") or {}

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


@dataclass
class RowScan:
    """A rows.jsonl read line by line: the rows that fit ``run_schema.ROW``, one per case (the
    first), and each line left out, as ``line N: why``. A last line without its newline that is
    not JSON yet is a row being written (or cut short by a kill): neither a row nor a problem."""

    rows: list[dict[str, Any]]
    problems: list[str]


def scan_rows(run_dir: Path) -> RowScan:
    path = run_dir / ROWS_FILE
    try:
        data = path.read_bytes() if path.exists() else b""
    except OSError as err:
        raise StructbenchError(f"unreadable {ROWS_FILE} ({err.strerror or err}): {path}") from None
    lines = data.split(b"\n")
    partial = lines.pop()  # b"" when the file ends with its newline
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    first: dict[str, int] = {}
    for number, line in enumerate([*lines, partial], 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if number <= len(lines):
                problems.append(f"line {number}: not a JSON row ({type(err).__name__})")
            continue
        wrong = problem(row, ROW)
        if wrong:
            problems.append(f"line {number}: {wrong}")
        elif row["case_key"] in first:
            problems.append(f"line {number}: case {shown(row['case_key'])} again (first on line {first[row['case_key']]})")
        else:
            first[row["case_key"]] = number
            rows.append(row)
    return RowScan(rows, problems)


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The usable rows of a run folder (``scan_rows`` without what was left out)."""
    return scan_rows(run_dir).rows


def described(problems: list[str], shown_at_most: int = 3) -> str:
    """``problems`` for one warning line: how many, and the first few."""
    listed = "; ".join(problems[:shown_at_most]) + (f"; and {len(problems) - shown_at_most} more"
                                                    if len(problems) > shown_at_most else "")
    return f"{len(problems)} line(s) ({listed})"


def read_meta(run_dir: Path) -> dict[str, Any]:
    """run.json, checked against ``run_schema.RUN``; a file that is not JSON or does not fit is
    a ``StructbenchError`` naming it and the first field that is wrong."""
    meta_path = run_dir / "run.json"
    if not meta_path.exists():
        raise StructbenchError(f"not a structbench run folder (no run.json): {run_dir}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise StructbenchError(f"unreadable run.json ({type(err).__name__}: {err}): {meta_path}") from None
    wrong = problem(meta, RUN)
    if wrong:
        raise StructbenchError(f"malformed run.json ({wrong}): {meta_path}")
    meta.pop("rows", None)
    return meta


def load_run(run_dir: str | Path) -> RunData:
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    scan = scan_rows(run_dir)
    return RunData(run_dir, meta, scan.rows, scan.problems)


REFERENCE = "reference"
"""The folder of a results root that holds the committed reference runs: a reference run is
``<root>/reference/<suite>/<run_id>/``, a user's own run ``<root>/<suite>/<run_id>/``."""


def results_root(run_dir: str | Path) -> Path:
    """The results root a run belongs to, where its index and the one plotly.js every report
    loads live: reference runs and a user's own runs share ``results/``."""
    root = Path(run_dir).parent.parent
    return root.parent if root.name == REFERENCE else root


def reference_key(run: RunData) -> str:
    """What a reference run stands for: its suite at its default config (``llama-compress``),
    or at another of its configs, named by the file (``llama-compress@gemma3`` for
    ``--config suites/llama_compress/gemma3.yaml``), so each experiment's newest run is the
    one published."""
    config = (run.meta.get("cli") or {}).get("config")
    return f"{run.suite}@{Path(config).stem}" if config else run.suite


def reference_runs(results: Path) -> dict[str, RunData]:
    """The newest stored reference run of each experiment under ``<results>/reference``, by
    ``reference_key``."""
    newest: dict[str, RunData] = {}
    for run in list_runs(results / REFERENCE):  # newest first
        newest.setdefault(reference_key(run), run)
    return newest


def rows_made_at(run: RunData) -> list[str]:
    """The short commits a run's rows were made at (``+dirty`` kept): the rows' own ``commit``
    field, so a resume that added no row adds no commit; a run whose rows predate that field
    gives the commits its ``run.json`` records."""
    def short(commit: str, dirty: bool) -> str:
        return commit[:10] + ("+dirty" if dirty else "")

    made = {str(r["commit"]) for r in run.rows if r.get("commit")}
    if made:
        return sorted(short(c, c.endswith("+dirty")) for c in made)
    commits = run.meta.get("commits") or [run.meta.get("git") or {}]
    return sorted({short(c.get("commit") or "no git", bool(c.get("dirty"))) for c in commits})


def list_runs(root: str | Path, warn: Callable[[str], None] | None = None) -> list[RunData]:
    """Every readable run under ``root`` (``<root>/<suite>/<run_id>/run.json``), newest first;
    an unreadable or malformed one is left out, and ``warn`` told which and why."""
    runs = []
    for path in Path(root).glob("*/*/run.json"):
        try:
            runs.append(load_run(path.parent))
        except StructbenchError as err:
            if warn is not None:
                warn(f"warning: skipping {err}")
    return sorted(runs, key=lambda r: r.meta.get("started") or "", reverse=True)


LOCK_FILE = ".lock"


def is_live(run_dir: Path) -> bool:
    """Whether some process holds the run's lock (is writing it now)."""
    path = run_dir / LOCK_FILE
    if not path.exists():
        return False
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def shown_status(run: RunData) -> str:
    """The status to show: a run stored as ``running`` that nobody holds was killed (``crashed``;
    ``--resume`` continues it)."""
    status = run.meta.get("status") or "?"
    return "crashed" if status == "running" and not is_live(run.run_dir) else status


def _cut_partial_line(run_dir: Path, warn: Callable[[str], None]) -> None:
    """A kill mid-append leaves a last line without its newline; appending would glue the next
    row onto it and lose both. Cut it off, saying which case will run again."""
    path = run_dir / ROWS_FILE
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    fragment = data[keep:].decode("utf-8", "replace")
    match = re.search(r'"case_key": "((?:[^"\\]|\\.)*)', fragment)
    case = json.loads(f'"{match.group(1)}"') if match and match.group(0).endswith(match.group(1)) else None
    with path.open("r+b") as fh:
        fh.truncate(keep)
    warn(f"warning: cut off a partial last row of {path} ({len(data) - keep} bytes"
         + (f", case {case}" if case else "") + "); that case runs again")


def _repair(run_dir: Path, scan: RowScan, warn: Callable[[str], None]) -> None:
    """Rewrite rows.jsonl with only ``scan.rows``, keeping the file as it was next to it
    (``rows.jsonl.bak-<time>``), so that the run goes on from rows every reader agrees on."""
    path = run_dir / ROWS_FILE
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    backup, n = path.with_name(f"{ROWS_FILE}.bak-{stamp}"), 1
    while True:
        try:
            with backup.open("xb") as fh:
                fh.write(path.read_bytes())
            break
        except FileExistsError:
            n += 1
            backup = path.with_name(f"{ROWS_FILE}.bak-{stamp}-{n}")
    tmp = path.with_name(ROWS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(row, default=str) + "\n" for row in scan.rows))
    os.replace(tmp, path)
    warn(f"warning: {path}: left out {described(scan.problems)}; cases without a row run again; "
         f"the file as it was is kept as {backup.name}")


class RunWriter:
    """Owns one run folder: appends rows as they finish and keeps run.json current. It holds
    an exclusive lock on the folder for its lifetime, so a second process resuming or writing
    the same run is refused instead of doubling its rows."""

    def __init__(self, run_dir: Path, meta: dict[str, Any], warn: Callable[[str], None] | None = None) -> None:
        self.run_dir = run_dir
        self.meta = meta
        run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = (run_dir / LOCK_FILE).open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StructbenchError(f"{run_dir} is being written by another process; wait for it to finish "
                                   "(or stop it) before resuming") from None
        warn = warn or (lambda message: None)
        _cut_partial_line(run_dir, warn)
        scan = scan_rows(run_dir)
        if scan.problems:
            _repair(run_dir, scan, warn)
        self.rows = scan.rows
        self._note_commit(git_info())
        self._flush_meta()

    def _note_commit(self, git: dict[str, Any]) -> None:
        """Every commit this run's rows were made at, in order (``commits``); a resume at another
        commit records the result-producing files changed since the last one."""
        self.commit = f"{git['commit']}+dirty" if git["commit"] and git["dirty"] else git["commit"]
        commits = self.meta.setdefault("commits", [])
        if commits and (commits[-1]["commit"], commits[-1]["dirty"]) == (git["commit"], git["dirty"]):
            return
        entry = {**git, "at": now()}
        if commits and commits[-1]["commit"] and git["commit"]:
            entry["changed"] = changed_code(commits[-1]["commit"], git["commit"], PROJECT_ROOT)
        commits.append(entry)

    def close(self) -> None:
        """Release the folder's lock (also released when the process ends)."""
        self._lock.close()

    @classmethod
    def create(cls, out: Path, suite: Suite, config: dict[str, Any], cli: dict[str, Any], seed: int) -> "RunWriter":
        git = git_info()
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        device = str(cli.get("device", "cpu")).replace(":", "")
        name = f"{stamp}-{device}-{(git['commit'] or 'nogit')[:8]}"
        (out / suite.name).mkdir(parents=True, exist_ok=True)
        run_dir, n = out / suite.name / name, 1
        while True:  # exclusive: two runs started in the same second never share a folder
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                n += 1
                run_dir = out / suite.name / f"{name}-{n}"
        meta = {
            "schema_version": SCHEMA_VERSION,
            "suite": {"name": suite.name, "version": suite.version, "description": suite.description},
            "schema": suite.schema.to_json(),
            "config": config,
            "cli": cli,
            "git": git,
            "env": environment(cli.get("device", "cpu"), cli.get("threads", 1)),
            "seed": seed,
            "started": now(),
            "finished": None,
            "status": "running",
            "n_cases": None,
            "n_done": 0,
            "metrics": {k: vars(v) for k, v in suite.metrics.items()},
            "about": suite.about(config) if suite.about is not None else {},
        }
        return cls(run_dir, meta)

    @classmethod
    def reopen(cls, run_dir: Path, suite: Suite, warn: Callable[[str], None] | None = None) -> "RunWriter":
        """Continue a stored run; one of schema 1 gains the suite's schema and drops its row copy.
        A run.json that does not fit the run schema, or lacks an option the run needs
        (``run_schema.RESUME_CLI``), is a ``StructbenchError``."""
        meta = read_meta(run_dir)
        missing = [key for key in RESUME_CLI if key not in meta["cli"]]
        if missing:
            raise StructbenchError(f"cannot resume {run_dir}: its run.json has no cli.{missing[0]} (the option the "
                                   "run was started with); only runs written by bench.py can be resumed")
        if meta.get("schema_version", 1) < SCHEMA_VERSION:
            meta.setdefault("upgraded", []).append({"from": meta.get("schema_version", 1), "at": now()})
            meta["schema_version"] = SCHEMA_VERSION
            meta["schema"] = suite.schema.to_json()
        meta["status"] = "running"
        meta.setdefault("resumed", []).append(now())
        return cls(run_dir, meta, warn)

    def done_keys(self) -> set[str]:
        return {row["case_key"] for row in self.rows if "case_key" in row}

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Store finished rows, each stamped with the commit it was made at."""
        rows = [{**row, "commit": row.get("commit", self.commit)} for row in rows]
        with (self.run_dir / ROWS_FILE).open("a") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.extend(rows)
        self.meta["n_done"] = len(self.done_keys())
        self._flush_meta()

    def judge(self, suite: Suite) -> list[str]:
        """Store the suite's verdict on this run's rows (``reliability``); its reasons, if any."""
        if suite.assess is None:
            return []
        reasons = suite.assess(self.rows)
        self.meta["reliability"] = {"unreliable": bool(reasons), "reasons": reasons}
        return reasons

    def note_inputs(self, suite: Suite) -> None:
        """Store the SHA-256 of every input file the suite's config reads (``inputs``)."""
        if suite.inputs is None:
            return
        try:
            self.meta["inputs"] = input_digests(suite.inputs(self.meta["config"]))
        except StructbenchError as err:  # an input that was never installed: say so, keep the rows
            self.meta["inputs"] = {"error": str(err)}

    def finish(self, status: str) -> None:
        self.meta["status"] = status
        self.meta["finished"] = now()
        self._flush_meta()

    def _flush_meta(self) -> None:
        write_json_atomic(self.run_dir / "run.json", self.meta)
