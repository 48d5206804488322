"""Cases on a Ray cluster: the local machine's own Ray instance, or a cluster's (``ray start``).

Each group of cases (one case, or a suite's ``shard_keys`` group that must run in order) is one
Ray task. A task asks for ``--threads`` CPUs, or, for a suite whose cases time the hardware
(``Suite.exclusive``: kernels), every CPU of the largest node, so no other case shares its
cores. Ray reuses worker processes, so what a suite caches per process (a model's weights,
calibration Grams) is loaded once per worker. Workers only return rows; the driver appends them
(one writer), so a worker that dies mid-case loses nothing written. Ray re-runs such a task
(``RETRIES``); Ctrl-C cancels the outstanding tasks and keeps every finished row.
"""
from __future__ import annotations

import os
import socket
from dataclasses import replace
from typing import Any, Callable

import torch

from structbench.cases import run_one
from structbench.errors import StructbenchError
from structbench.suite import RunContext, Suite

RETRIES = 2  # re-runs of a task whose worker process died


def _run_group(suite: Suite, ctx: RunContext, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """On the worker: the group's cases in order, each seeing the rows of the ones before."""
    torch.set_num_threads(ctx.threads)
    rows = list(ctx.rows)
    out: list[dict[str, Any]] = []
    where = {"worker": f"{socket.gethostname()}:{os.getpid()}"}
    for case in cases:
        mine = [{**row, **where} for row in run_one(suite, case, replace(ctx, rows=rows, log=print))]
        rows.extend(mine)
        out.extend(mine)
    return out


class RayExecutor:
    """Connects to ``address`` (a running cluster, or ``auto``) or starts a local instance with
    ``workers`` CPUs (default: this machine's)."""

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise StructbenchError("--executor ray needs Ray: pip install 'ray>=2.9' (scripts/setup.sh --test "
                                   "installs it)") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            options = {"address": address} if address else {"num_cpus": workers or os.cpu_count() or 1}
            try:
                ray.init(include_dashboard=False, log_to_driver=False, **options)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise StructbenchError(f"--ray-address {address}: cannot connect ({err})") from None

    def run(self, suite: Suite, ctx: RunContext, groups: list[list[dict[str, Any]]], rows: list[dict[str, Any]],
            finished: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None]) -> None:
        ray = self.ray
        cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
        need = cpus if suite.exclusive else min(ctx.threads, cpus)
        task = ray.remote(_run_group).options(num_cpus=need, max_retries=RETRIES,
                                              num_gpus=1 if ctx.device.startswith("cuda") else 0)
        keys = suite.schema.shard_keys
        pending: dict[Any, list[dict[str, Any]]] = {}
        for group in groups:
            same = [r for r in rows if keys and all(r.get(k) == group[0].get(k) for k in keys)]
            pending[task.remote(suite, replace(ctx, rows=same, log=print), group)] = group
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    group = pending.pop(ref)
                    finished(group, ray.get(ref))
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            self.close()

    def close(self) -> None:
        """Stop the local instance this executor started (a cluster it joined keeps running)."""
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
