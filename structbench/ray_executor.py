"""Cases on a Ray cluster: the local machine's own Ray instance, or a cluster's (``ray start``).

Each group of cases (one case, or a suite's ``shard_keys`` group that must run in order) is one
Ray task. A task asks for ``--threads`` CPUs, or, for a suite whose cases time the hardware
(``Suite.exclusive``: kernels), every CPU of the largest node, so no other case shares its
cores. Ray reuses worker processes, so what a suite caches per process (a model's weights,
calibration Grams) is loaded once per worker. Workers only return rows; the driver appends them
(one writer), so a worker that dies mid-case loses nothing written. Ray re-runs such a task
(``RETRIES``).

Ctrl-C and SIGTERM are held while the driver is inside Ray: an exception raised in the middle
of a Ray call (or a forced cancel) can leave Ray's task bookkeeping half done and abort the
driver. On a signal the driver stops submitting, keeps every finished group's rows, cancels
the rest, shuts Ray down and only then lets the signal act (an interrupted run, as serially).
"""
from __future__ import annotations

import os
import signal
import socket
import threading
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator

import torch

from structbench.cases import run_one
from structbench.errors import StructbenchError
from structbench.suite import RunContext, Suite

RETRIES = 2  # re-runs of a task whose worker process died
CONNECT_TIMEOUT_S = 10  # a --ray-address must accept a connection this soon (ray.init retries for minutes)
POLL_S = 0.2  # how often the driver looks up from waiting on tasks to see a held signal


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


def _check_reachable(address: str) -> None:
    """Refuse, within ``CONNECT_TIMEOUT_S``, an address where nothing accepts a connection."""
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:  # the host:port ray.init will dial ("auto": the cluster this node joined)
        target = address.removeprefix("ray://") if address.startswith("ray://") else \
            canonicalize_bootstrap_address_or_die(address)
        host, _, port = target.rpartition(":")
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except TimeoutError:
        raise StructbenchError(f"cannot connect to Ray at {address}: nothing answered within {CONNECT_TIMEOUT_S} s; "
                               "give a running cluster's HOST:PORT or auto, or leave --ray-address out for a local "
                               "instance") from None
    except (OSError, ValueError) as err:  # refused, unresolvable, no cluster for auto, not HOST:PORT
        raise StructbenchError(f"cannot connect to Ray at {address} ({err}); give a running cluster's HOST:PORT "
                               "or auto, or leave --ray-address out for a local instance") from None


@contextmanager
def _signals_held() -> Iterator[list[int]]:
    """SIGINT and SIGTERM noted, not acted on, while the block runs; on leaving it normally the
    first one is sent again to its own handler. Only the main thread can take signals over; a
    signal the process ignores stays ignored."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    held = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    held = {s: handler for s, handler in held.items() if handler not in (signal.SIG_IGN, None)}
    for s in held:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)
    if caught:
        signal.raise_signal(caught[0])


class RayExecutor:
    """Connects to ``address`` (a running cluster, or ``auto``) or starts a local instance with
    ``workers`` CPUs (default: this machine's). Made before the run folder, so a bad address
    is refused with nothing written; Ray itself starts in ``start``."""

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise StructbenchError("--executor ray needs Ray: pip install 'ray>=2.9' (scripts/setup.sh --test "
                                   "installs it)") from None
        self.ray, self.address, self.workers = ray, address, workers
        self.started = False
        if address and not ray.is_initialized():
            _check_reachable(address)

    def start(self) -> dict[str, Any]:
        """Connect, or start the local instance; what the run records of it."""
        ray = self.ray
        if not ray.is_initialized():
            options = {"address": self.address} if self.address else {"num_cpus": self.workers or os.cpu_count() or 1}
            on_sigterm = signal.getsignal(signal.SIGTERM)
            try:
                ray.init(include_dashboard=False, log_to_driver=False, **options)
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = f"Ray at {self.address}" if self.address else "a local Ray instance"
                raise StructbenchError(f"cannot connect to {where} ({err})") from None
            finally:  # ray.init replaces the driver's SIGTERM handler with a plain exit
                if on_sigterm is not None and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, on_sigterm)
            self.started = True
        nodes = [n for n in ray.nodes() if n["Alive"]]
        return {"name": "ray", "address": self.address or "local", "nodes": len(nodes),
                "workers": int(sum(n["Resources"].get("CPU", 0) for n in nodes))}

    def run(self, suite: Suite, ctx: RunContext, groups: list[list[dict[str, Any]]], rows: list[dict[str, Any]],
            finished: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None]) -> None:
        ray = self.ray
        cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
        need = cpus if suite.exclusive else min(ctx.threads, cpus)
        task = ray.remote(_run_group).options(num_cpus=need, max_retries=RETRIES,
                                              num_gpus=1 if ctx.device.startswith("cuda") else 0)
        keys = suite.schema.shard_keys
        pending: dict[Any, list[dict[str, Any]]] = {}

        def collect(timeout: float) -> None:
            ready, _ = ray.wait(list(pending), num_returns=1 if timeout else len(pending), timeout=timeout)
            for ref in ready:
                finished(pending.pop(ref), ray.get(ref))

        with _signals_held() as caught:
            try:
                for group in groups:
                    if caught:
                        break
                    same = [r for r in rows if keys and all(r.get(k) == group[0].get(k) for k in keys)]
                    pending[task.remote(suite, replace(ctx, rows=same, log=print), group)] = group
                while pending and not caught:
                    collect(POLL_S)
                if pending:  # a signal came: keep what has finished, drop the rest
                    collect(0)
                    for ref in pending:
                        ray.cancel(ref)  # never force=True: killing a worker mid-reply can abort the driver
            finally:
                if self.started:
                    ray.shutdown()
                    self.started = False

    def close(self) -> None:
        """Stop the local instance this executor started (a cluster it joined keeps running)."""
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False
