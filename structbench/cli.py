"""The command line: run a suite, list what exists, rebuild reports, compare two runs.

Every user error ends as one ``error: ...`` line on stderr and exit status 2; results
already written stay on disk.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

import torch

from structbench.config import load_config, resolve
from structbench.errors import StructbenchError
from structbench.cache import cache_root
from structbench.merge import merge_shards
from structbench.publish import publish, summary
from structbench.families import get_family, list_families
from structbench.results import RunWriter, list_runs, load_run
from structbench.suite import RunContext, Suite
from suites import SUITES

DTYPES = ("float32", "float64", "bfloat16", "float16")
DEFAULT_OUT = Path("results")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (the run is marked ``interrupted`` and published), exit 143."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise StructbenchError(f"{message} (see --help)")


def _run_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="bench.py", description="Benchmark structured weight matrices against dense.",
                      epilog="Subcommands: 'bench.py report [RUN_DIR ...]', 'bench.py compare RUN_A RUN_B', "
                             "'bench.py merge SHARD_DIR ...'.")
    p.add_argument("--suite", help="suite to run (see --list)")
    p.add_argument("--list", action="store_true", help="list suites and families, then exit")
    p.add_argument("--device", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--dtype", help=f"one of {', '.join(DTYPES)} (default float32)")
    p.add_argument("--families", help="comma-separated families (default: the config's)")
    p.add_argument("--quick", action="store_true", help="the suite's small, fast configuration")
    p.add_argument("--config", type=Path, help="YAML config replacing the suite's default")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (dotted for nested keys, value in YAML); repeatable")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results root (default results/)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores; with --resume, the run's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--executor", choices=("serial", "ray"), default="serial",
                   help="where cases run: here, one after another (default), or on Ray")
    p.add_argument("--ray-address", metavar="ADDR", help="a running Ray cluster (e.g. auto); default: start a local one")
    p.add_argument("--workers", type=int, help="CPUs of the local Ray instance (default: all cores)")
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (0 <= I < N) of the cases, chosen by a hash "
                   "of each case; merge the shards' folders with 'bench.py merge'")
    p.add_argument("--retry-noisy", type=int, default=0, metavar="K",
                   help="re-measure a case whose timing is noisy up to K more times (kernels; default 0)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                   help="continue an interrupted run (default: the newest unfinished run of --suite)")
    return p


def _check_device(device: str) -> str:
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise StructbenchError(f"--device {device}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
        index = device.partition(":")[2]
        if index and not (index.isdigit() and int(index) < torch.cuda.device_count()):
            raise StructbenchError(f"--device {device}: no such GPU; accepted: cuda, cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        return device
    raise StructbenchError(f"--device {device!r} not understood; accepted: cpu, cuda, cuda:N")


def _list() -> int:
    print("suites:")
    for name in SUITES.names():
        print(f"  {name:16s} {SUITES.get(name).description}")
    print("families:")
    for name in list_families():
        cls = get_family(name)
        print(f"  {name:16s} hyperparameters: {', '.join(sorted(cls.hparam_names())) or '-'}")
    return 0


def _find_resumable(out: Path, suite: str) -> Path:
    for run in list_runs(out, warn=lambda msg: print(msg, file=sys.stderr)):
        if run.suite == suite and run.meta.get("status") != "complete":
            return run.run_dir
    raise StructbenchError(f"--resume: no unfinished {suite} run under {out}")


def _run(args: argparse.Namespace) -> int:
    executor = None  # checked before the run folder is made or reopened: a refusal leaves none behind
    if args.executor == "ray":
        from structbench.ray_executor import RayExecutor

        if args.workers is not None and args.workers < 1:
            raise StructbenchError(f"--workers must be >= 1, got {args.workers}")
        executor = RayExecutor(args.ray_address, args.workers)
    if args.resume:
        suite, writer = _reopen(args)
        config, cli = writer.meta["config"], writer.meta["cli"]
        if "quick" in config:  # a schema 1 run stored the config with its overlay unapplied
            config = writer.meta["config"] = resolve(suite.name, config, suite.validate, quick=cli["quick"])
        _check_device(cli["device"])
        if args.threads is not None and args.threads != cli["threads"]:
            # Threads change speed, not results: a run resumed on a busier machine may need
            # fewer. The change is recorded and said, since timings differ across it.
            _check_threads(args.threads)
            print(f"resuming with --threads {args.threads} (the run started with {cli['threads']}; "
                  "timings before and after are not comparable)", file=sys.stderr)
            writer.meta.setdefault("threads_changed", []).append(
                {"at": writer.meta["resumed"][-1], "from": cli["threads"], "to": args.threads})
            cli["threads"] = args.threads
    else:
        if not args.suite:
            raise StructbenchError("give --suite NAME (see --list), or a subcommand: report, compare")
        suite = SUITES.get(args.suite)
        device = _check_device(args.device or "cpu")
        args.dtype = args.dtype or "float32"
        if args.dtype not in DTYPES:
            raise StructbenchError(f"--dtype {args.dtype!r} not supported; accepted: {', '.join(DTYPES)}")
        args.threads = (os.cpu_count() or 1) if args.threads is None else _check_threads(args.threads)
        families = None
        if args.families is not None:
            families = [f.strip() for f in args.families.split(",") if f.strip()]
            if not families:
                raise StructbenchError(f"--families {args.families!r} names no family; give comma-separated names (see --list)")
        config = resolve(suite.name, load_config(args.config or suite.config_path), suite.validate,
                         quick=args.quick, families=families, sets=args.set)
        if args.retry_noisy < 0:
            raise StructbenchError(f"--retry-noisy must be >= 0, got {args.retry_noisy}")
        cli = {"device": device, "dtype": args.dtype, "threads": args.threads, "quick": args.quick,
               "retry_noisy": args.retry_noisy, **({"shard": _check_shard(args.shard)} if args.shard else {}),
               "seed": args.seed, "families": args.families, "config": str(args.config) if args.config else None, "set": args.set}
        writer = _writable(lambda: RunWriter.create(args.out, suite, config, cli, args.seed), args.out)
    torch.set_num_threads(cli["threads"])
    ctx = RunContext(device=cli["device"], dtype=cli["dtype"], threads=cli["threads"], seed=cli["seed"],
                     quick=cli["quick"], run_dir=writer.run_dir, cache_dir=cache_root(), config=config,
                     retry_noisy=cli.get("retry_noisy", 0))
    from structbench.runner import run_suite

    root = writer.run_dir.parent.parent
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        run_suite(suite, writer, ctx, executor)
    finally:  # an interrupted or failed run still gets tables and a report of what it finished
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not stop the publishing
        try:
            _publish_uninterrupted(writer.run_dir, root)
        finally:
            signal.signal(signal.SIGTERM, previous)
            writer.close()
    run = load_run(writer.run_dir)
    print(summary(run))
    if (run.meta.get("reliability") or {}).get("unreliable"):
        print("warning: this run is marked unreliable: " + "; ".join(run.meta["reliability"]["reasons"]), file=sys.stderr)
    print(f"results: {writer.run_dir}  (table.md, table.csv, report.html; index: {root / 'index.html'})")
    if not any(row.get("status") == "ok" for row in run.rows):
        print("error: no case finished ok (see the reasons above)", file=sys.stderr)
        return 1
    return 0


def _writable(make: Callable[[], RunWriter], out: Path) -> RunWriter:
    """The run folder, or one line naming the path that cannot be written."""
    try:
        return make()
    except OSError as err:
        where = err.filename or out
        raise StructbenchError(f"--out {out}: cannot write {where} ({err.strerror or err}); "
                               "give a writable folder") from None


def _publish_uninterrupted(run_dir: Path, root: Path) -> None:
    """Tables, report and index, with Ctrl-C held off: a second Ctrl-C while the first one's
    report is written must not leave the run without one."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        publish([run_dir], root)
    except OSError as err:
        raise StructbenchError(f"cannot write the tables or report of {run_dir} ({err.filename or ''}: "
                               f"{err.strerror or err}); its rows are kept in rows.jsonl: rebuild them with "
                               "'bench.py report' once there is room") from None
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_shard(text: str) -> list[int]:
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise StructbenchError(f"--shard {text!r} not understood; accepted: I/N with 0 <= I < N, e.g. 0/4")
    return [int(index), int(count)]


def _check_threads(threads: int) -> int:
    if threads < 1:
        raise StructbenchError(f"--threads must be >= 1, got {threads}")
    return threads


def _reopen(args: argparse.Namespace) -> tuple[Suite, RunWriter]:
    """The run ``--resume`` names (or the newest unfinished one of ``--suite``), reopened."""
    given = [flag for flag, value in (("--config", args.config), ("--families", args.families), ("--quick", args.quick),
                                      ("--set", args.set), ("--device", args.device), ("--dtype", args.dtype),
                                      ("--shard", args.shard))
             if value]
    if given:
        raise StructbenchError(f"--resume continues with the run's stored options; drop {', '.join(given)}")
    if args.resume == "latest":
        if not args.suite:
            raise StructbenchError("--resume without a run folder needs --suite NAME")
        run = load_run(_find_resumable(args.out, SUITES.get(args.suite).name))
    else:
        run = load_run(args.resume)
        if args.suite and run.suite != args.suite:
            raise StructbenchError(f"--resume {args.resume} is a {run.suite} run, not {args.suite}")
    suite = SUITES.get(run.suite)
    return suite, _writable(lambda: RunWriter.reopen(run.run_dir, suite, warn=lambda msg: print(msg, file=sys.stderr)),
                            run.run_dir)


def _report(argv: Sequence[str]) -> int:
    p = OneLineParser(prog="bench.py report", description="Rebuild HTML reports from stored results.")
    p.add_argument("runs", nargs="*", type=Path, help="run folders (default: every run under --out)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    runs = [load_run(r).run_dir for r in args.runs] if args.runs else \
        [r.run_dir for r in list_runs(args.out, warn=lambda msg: print(msg, file=sys.stderr))]
    publish(runs, args.out)
    print(f"rebuilt {len(runs)} report(s); index: {args.out / 'index.html'}")
    return 0


def _merge(argv: Sequence[str]) -> int:
    p = OneLineParser(prog="bench.py merge", description="Merge the folders of one run's shards into one run.")
    p.add_argument("runs", nargs="+", type=Path, help="the shard run folders")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    shards = [load_run(r) for r in args.runs]
    suite = SUITES.get(shards[0].suite)
    writer = _writable(lambda: merge_shards(shards, suite, args.out), args.out)
    publish([writer.run_dir], args.out)
    run = load_run(writer.run_dir)
    print(summary(run))
    count = (shards[0].meta.get("cli", {}).get("shard") or [0, 1])[1]
    print(f"merged {len(shards)} of {count} shard(s), {len(run.rows)} rows -> {writer.run_dir}"
          + ("" if run.meta["status"] == "complete" else " (shards missing or unfinished: status interrupted)"))
    return 0


def _compare(argv: Sequence[str]) -> int:
    from structbench.compare import compare_runs
    from structbench.report.tables import geomean, markdown

    p = OneLineParser(prog="bench.py compare", description="Per-case ratios of run B's headline metrics "
                      "against run A's (two runs of one suite).")
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--threshold", type=float, default=1.1, help="flag ratios beyond this factor (default 1.1)")
    p.add_argument("--alpha", type=float, default=0.01, help="significance level of the rank test")
    p.add_argument("--force", action="store_true", help="compare runs marked unreliable too")
    args = p.parse_args(argv)
    if not args.threshold > 1:
        raise StructbenchError(f"--threshold must be a factor > 1, got {args.threshold}")
    if not 0 < args.alpha < 1:
        raise StructbenchError(f"--alpha must be in (0, 1), got {args.alpha}")
    table = compare_runs(load_run(args.run_a), load_run(args.run_b), args.threshold, args.alpha, args.force)
    if table.empty:
        raise StructbenchError("compare: the two runs share no measured case")
    print(markdown(table))
    for metric, part in table.groupby("metric", sort=False):
        flagged = part[part["flag"] != ""]
        test = f"p < {args.alpha}" if part["p_value"].notna().all() else "no samples: ratio alone"
        print(f"\n{metric}: {len(flagged)} of {len(part)} cases changed beyond x{args.threshold} ({test}); "
              f"geometric mean ratio {geomean(part['ratio'].dropna()):.3f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "report":
            return _report(argv[1:])
        if argv and argv[0] == "compare":
            return _compare(argv[1:])
        if argv and argv[0] == "merge":
            return _merge(argv[1:])
        args = _run_parser().parse_args(argv)
        if args.list:
            return _list()
        return _run(args)
    except StructbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        return 143 if isinstance(stop, Terminated) else 130
