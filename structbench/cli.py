"""The command line: parse and check the arguments, then hand over: a suite run to
``structbench.launch``, ``report`` and ``publish`` to the publish step, ``merge`` and
``compare`` to theirs.

Every user error ends as one ``error: ...`` line on stderr and exit status 2, found before a
run folder is made; results already written stay on disk.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

import torch

from structbench import launch
from structbench.config import load_config, resolve
from structbench.errors import StructbenchError, writable
from structbench.families import get_family, list_families
from structbench.merge import merge_shards
from structbench.publish import index, publish, publish_reference, summary
from structbench.results import PROJECT_ROOT, REFERENCE, list_runs, load_run, results_root
from structbench.suite import Suite
from suites import SUITES

DTYPES = ("float32", "float64", "bfloat16", "float16")
DEFAULT_OUT = Path("results")
MAX_THREADS = 1024
"""``--threads`` above this is a typo, not a machine: refused rather than spawning the threads."""
MAX_SEED = 2**63 - 1
"""Seeds are 0 .. 2**63 - 1: what ``torch.manual_seed`` and ``torch.Generator`` take without
wrapping (a negative seed would alias a large one)."""
SETUP_MODELS = "bash scripts/setup.sh --models"


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise StructbenchError(f"{message} (see --help)")


def _folder(text: str) -> Path:
    """An ``--out`` folder; an empty one would silently mean the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path; give a folder, e.g. results")
    return Path(text)


def _run_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="bench.py", description="Benchmark structured weight matrices against dense.",
                      epilog="Subcommands: 'bench.py report [RUN_DIR ...]', 'bench.py compare RUN_A RUN_B', "
                             "'bench.py merge SHARD_DIR ...', 'bench.py publish'.")
    p.add_argument("--suite", help="suite to run (see --list)")
    p.add_argument("--list", action="store_true", help="list suites and families, then exit")
    p.add_argument("--device", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--dtype", help=f"one of {', '.join(DTYPES)} (default float32)")
    p.add_argument("--families", help="comma-separated families (default: the config's)")
    p.add_argument("--quick", action="store_true", help="the suite's small, fast configuration")
    p.add_argument("--config", type=Path, help="YAML config replacing the suite's default")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (dotted for nested keys, value in YAML); repeatable")
    p.add_argument("--out", type=_folder, default=DEFAULT_OUT, help="results root (default results/)")
    p.add_argument("--threads", type=int, help=f"CPU threads, 1..{MAX_THREADS} (default: all cores; with --resume, "
                   "the run's own)")
    p.add_argument("--seed", type=int, default=0, help="0..2**63-1 (default 0)")
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


def check_device(device: str) -> str:
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


def check_requires(suite: Suite) -> None:
    """One line naming the set-up command unless every module ``suite.requires`` is installed;
    checked before the config, whose validation may already need them."""
    missing = [name for name in suite.requires if not _installed(name)]
    if missing:
        raise StructbenchError(f"the {suite.name} suite needs {', '.join(missing)}, not installed for "
                               f"{sys.executable}; install them with: {SETUP_MODELS}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as missing
        return False


def _list() -> int:
    print("suites:")
    for name in SUITES.names():
        print(f"  {name:16s} {SUITES.get(name).description}")
    print("families:")
    for name in list_families():
        cls = get_family(name)
        print(f"  {name:16s} hyperparameters: {', '.join(sorted(cls.hparam_names())) or '-'}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise StructbenchError(f"--workers must be >= 1, got {args.workers}")
    placement = launch.Placement(args.executor, args.ray_address, args.workers)
    if args.resume:
        return _resume(args, placement)
    if not args.suite:
        raise StructbenchError("give --suite NAME (see --list), or a subcommand: report, compare")
    suite = SUITES.get(args.suite)
    check_requires(suite)
    device = check_device(args.device or "cpu")
    dtype = args.dtype or "float32"
    if dtype not in DTYPES:
        raise StructbenchError(f"--dtype {dtype!r} not supported; accepted: {', '.join(DTYPES)}")
    threads = (os.cpu_count() or 1) if args.threads is None else _check_threads(args.threads)
    if not 0 <= args.seed <= MAX_SEED:
        raise StructbenchError(f"--seed must be an integer in 0..{MAX_SEED} (2**63 - 1), got {args.seed}")
    if args.retry_noisy < 0:
        raise StructbenchError(f"--retry-noisy must be >= 0, got {args.retry_noisy}")
    shard = _check_shard(args.shard) if args.shard else None
    families = None
    if args.families is not None:
        families = [f.strip() for f in args.families.split(",") if f.strip()]
        if not families:
            raise StructbenchError(f"--families {args.families!r} names no family; give comma-separated names (see --list)")
    config = resolve(suite.name, load_config(args.config or suite.config_path), suite.validate,
                     quick=args.quick, families=families, sets=args.set)
    options = {"device": device, "dtype": dtype, "threads": threads, "quick": args.quick,
               "retry_noisy": args.retry_noisy, **({"shard": shard} if shard else {}),
               "seed": args.seed, "families": args.families, "config": str(args.config) if args.config else None,
               "set": args.set}
    return launch.start(suite, config, options, args.out, placement)


def _resume(args: argparse.Namespace, placement: launch.Placement) -> int:
    """``--resume``: the stored run, its stored options checked here as given ones would be."""
    given = [flag for flag, value in (("--config", args.config), ("--families", args.families), ("--quick", args.quick),
                                      ("--set", args.set), ("--device", args.device), ("--dtype", args.dtype),
                                      ("--shard", args.shard))
             if value]
    if given:
        raise StructbenchError(f"--resume continues with the run's stored options; drop {', '.join(given)}")
    run = launch.find_run(args.resume, SUITES.get(args.suite) if args.suite else None, args.out)
    check_requires(SUITES.get(run.suite))
    check_device(run.meta["cli"]["device"])
    threads = None if args.threads is None else _check_threads(args.threads)
    return launch.resume(run, threads, placement)


def _check_shard(text: str) -> list[int]:
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise StructbenchError(f"--shard {text!r} not understood; accepted: I/N with 0 <= I < N, e.g. 0/4")
    return [int(index), int(count)]


def _check_threads(threads: int) -> int:
    if not 1 <= threads <= MAX_THREADS:
        raise StructbenchError(f"--threads must be in 1..{MAX_THREADS}, got {threads}")
    return threads


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _report(argv: Sequence[str]) -> int:
    p = OneLineParser(prog="bench.py report", description="Rebuild the tables and HTML reports of stored runs "
                      "from their rows, and the index of the results root they live in.")
    p.add_argument("runs", nargs="*", type=Path, help="run folders (default: every run under --out, the reference "
                   "runs included)")
    p.add_argument("--out", type=_folder, help="the results root whose runs to rebuild when no run folder is given "
                   "(default results/)")
    args = p.parse_args(argv)
    if args.runs and args.out:
        raise StructbenchError("report: give run folders or --out, not both (a run is indexed in the results root "
                               "it lives in)")
    out = args.out or DEFAULT_OUT
    if args.runs:
        run_dirs = [load_run(r).run_dir for r in args.runs]
        targets = sorted({results_root(d) for d in run_dirs})
    else:
        run_dirs = [r.run_dir for root in (out / REFERENCE, out) for r in list_runs(root, warn=_warn)]
        targets = [out]
    with writable("--out" if args.out else "report into", targets[0]):
        publish(run_dirs)  # indexes each run's results root
        if not run_dirs:
            index(out)
    print(f"rebuilt {len(run_dirs)} report(s); index: " + ", ".join(str(root / "index.html") for root in targets))
    return 0


def _publish(argv: Sequence[str]) -> int:
    p = OneLineParser(prog="bench.py publish", description="Regenerate everything derived from the reference runs "
                      f"under RESULTS/{REFERENCE}/ from their stored rows: tables, reports, the index and the "
                      "tables published in README.md and docs/.")
    p.add_argument("--results", type=_folder, default=DEFAULT_OUT, help="the results root (default results/)")
    args = p.parse_args(argv)
    with writable("--results", args.results):
        changed = publish_reference(args.results)
    runs = list_runs(args.results / REFERENCE)
    print(f"rebuilt {len(runs)} reference run(s) and {args.results / 'index.html'}; "
          + (f"rewrote {', '.join(str(path.relative_to(PROJECT_ROOT)) for path in changed)}" if changed
             else "every published table was already current"))
    return 0


def _merge(argv: Sequence[str]) -> int:
    p = OneLineParser(prog="bench.py merge", description="Merge the folders of one run's shards into one run.")
    p.add_argument("runs", nargs="+", type=Path, help="the shard run folders")
    p.add_argument("--out", type=_folder, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    shards = [load_run(r) for r in args.runs]
    suite = SUITES.get(shards[0].suite)
    with writable("--out", args.out):
        writer = merge_shards(shards, suite, args.out)
        publish([writer.run_dir])
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


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "report":
        return _report(argv[1:])
    if argv and argv[0] == "compare":
        return _compare(argv[1:])
    if argv and argv[0] == "merge":
        return _merge(argv[1:])
    if argv and argv[0] == "publish":
        return _publish(argv[1:])
    args = _run_parser().parse_args(argv)
    if args.list:
        return _list()
    return _run(args)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _dispatch(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # a reader that has gone (``--list | head -1``) shows here, not at exit
        return status
    except StructbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        return 143 if isinstance(stop, launch.Terminated) else 130
    except BrokenPipeError:
        # Stop quietly, as a tool killed by SIGPIPE does (128 + 13); stdout goes to /dev/null
        # so the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
