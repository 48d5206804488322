"""Joining the shards of one run (``--shard I/N`` on several machines) into one run folder.

Storage-level work only: the rows are checked and copied, the merged run judged by the suite's
``assess`` like any run; publishing is the caller's.
"""
from __future__ import annotations

from pathlib import Path

from structbench.errors import StructbenchError
from structbench.results import ROWS_FILE, RunData, RunWriter, described
from structbench.suite import Suite


def merge_shards(shards: list[RunData], suite: Suite, out: Path) -> RunWriter:
    """A new run under ``out`` holding every shard's rows: ``complete`` when all ``N`` shards
    are there and finished, else ``interrupted``. Shards of different suites, configs,
    commits or shard counts, a shard given twice, two shards with one case, or a shard whose
    rows.jsonl has lines left out (``RunData.problems``: its ``--resume`` repairs it) are refused."""
    first = shards[0]
    for shard in shards:
        if shard.problems:
            raise StructbenchError(f"merge: {shard.run_dir / ROWS_FILE} has {described(shard.problems)}; "
                                   f"repair it with 'bench.py --resume {shard.run_dir}' first")
    for name, of in (("suite", lambda r: (r.suite, r.meta["suite"].get("version"))), ("config", lambda r: r.meta.get("config")),
                     ("commit", lambda r: r.meta.get("git", {}).get("commit")),
                     ("shard count", lambda r: (r.meta.get("cli", {}).get("shard") or [0, 1])[1])):
        differ = [r.run_dir for r in shards if of(r) != of(first)]
        if differ:
            raise StructbenchError(f"merge: {differ[0]} has another {name} than {first.run_dir}; merge shards of one run")
    taken = [tuple(r.meta.get("cli", {}).get("shard") or [0, 1]) for r in shards]
    if len(set(taken)) != len(taken):
        raise StructbenchError(f"merge: shard {sorted(set(t for t in taken if taken.count(t) > 1))[0]} given twice")
    rows = [row for r in shards for row in r.rows]
    keys = [row.get("case_key") for row in rows]
    if len(set(keys)) != len(keys):
        raise StructbenchError("merge: two shards hold the same case; merge shards of one run")
    cli = {k: v for k, v in first.meta.get("cli", {}).items() if k != "shard"}
    writer = RunWriter.create(out, suite, first.meta["config"], cli, first.meta.get("seed", 0))
    writer.meta.update(merged_from=[str(r.run_dir) for r in shards],
                       n_cases=sum(r.meta.get("n_cases") or 0 for r in shards))
    writer.append(rows)
    writer.judge(suite)  # the merged rows are judged as one run
    count = taken[0][1]
    whole = len(taken) == count and all(r.meta.get("status") == "complete" for r in shards)
    writer.finish("complete" if whole else "interrupted")
    writer.close()
    return writer
