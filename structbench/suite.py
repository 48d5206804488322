"""The contract between the runner and a suite.

A suite is data plus three functions: ``validate`` (one YAML config, its ``quick:`` overlay
already applied by ``structbench.config.resolve`` -> resolved config, or a
``StructbenchError`` naming the bad key), ``expand`` (resolved config -> cases) and
``run_case`` (one case -> result rows), and a ``Schema`` saying what its rows hold. The
generic layers (runner, tables, compare, publish) read the schema and name no suite
column. Suites never render; reports (``suites/<name>/report.py``) never measure, and find
what they need in the stored run (its rows, and ``about``), not in the suite.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Metric:
    """A measured column: its unit and which way is better, so tables can draw arrows."""

    unit: str = ""
    higher_is_better: bool | None = None
    description: str = ""


@dataclass(frozen=True)
class Schema:
    """What a suite's rows hold, stored in every run's ``run.json`` so that tables, reports
    and ``compare`` read it from the run rather than from the suite's code."""

    case_keys: tuple[str, ...]
    """The case fields that tell cases apart for a reader: the progress bar's label, and
    what ``compare`` matches two runs' rows on unless ``compare_on`` says otherwise."""
    headline: tuple[str, ...] = ()
    """The metrics the suite exists to measure, most important first: what ``compare``
    compares, and what reports lead with."""
    hidden: tuple[str, ...] = ()
    """Bulky columns (raw samples, curves, nested structures) kept in ``rows.jsonl`` only,
    never in ``table.csv`` / ``table.md``."""
    samples: dict[str, str] = field(default_factory=dict)
    """Headline metric -> the column of its raw samples, for ``compare``'s rank test."""
    compare_on: tuple[str, ...] = ()
    """Row fields two runs' rows must share to be compared (default: ``case_keys``)."""
    shard_keys: tuple[str, ...] = ()
    """Case fields that keep cases together in one ``--shard`` (cases that read earlier ones'
    rows, like approx's GD sweep); empty: every case is placed on its own."""
    cost_keys: tuple[str, ...] = ()
    """Case fields that decide how long a case takes (its family, whether it re-trains):
    ``structbench.estimate`` prices the cases left by the finished ones alike in them."""

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class RunContext:
    """What a case may know about the run it belongs to."""

    device: str
    dtype: str
    threads: int
    seed: int
    quick: bool
    run_dir: Path
    cache_dir: Path
    config: dict[str, Any]  # the resolved config in use (``--quick``'s overlay already applied)
    log: Callable[[str], None] = print
    retry_noisy: int = 0  # re-measure a noisy timing up to this many times (``--retry-noisy``)
    rows: Sequence[dict[str, Any]] = ()
    """Rows this run has finished so far, resumed ones included, for a case that builds on
    earlier ones (approx's GD step sweep); ``expand`` orders such cases after their inputs."""


@dataclass(frozen=True)
class Suite:
    name: str
    version: str  # bump whenever what a row means changes
    description: str
    config_path: Path  # the default YAML config
    validate: Callable[[dict[str, Any], str], dict[str, Any]]  # (one config, its name in messages) -> resolved
    expand: Callable[[dict[str, Any]], list[dict[str, Any]]]  # resolved config -> cases
    run_case: Callable[[dict[str, Any], RunContext], list[dict[str, Any]]]
    schema: Schema
    metrics: dict[str, Metric] = field(default_factory=dict)
    exclusive: bool = False
    """Whether a case times the hardware and so must own it: on Ray, every CPU of a node (or its
    GPU), never shared with another case."""
    about: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Resolved config -> facts its report needs that no row holds (a real model's provenance,
    what a synthetic kind is), stored in ``run.json`` as ``about`` so that reports read only
    the stored run."""
    assess: Callable[[Sequence[dict[str, Any]]], list[str]] | None = None
    """The run's rows -> why its numbers cannot be trusted (empty: no reason), checked when the
    run ends; a non-empty answer marks the run ``unreliable`` (kernels: its dense-vs-dense
    control and its share of noisy rows)."""
    inputs: Callable[[dict[str, Any]], dict[str, Path]] | None = None
    """Resolved config -> the input files it reads (model weights, text, task files), by name:
    their SHA-256 is stored in ``run.json`` when the run stops, so a figure names its data."""
    phases: Callable[[list[dict[str, Any]]], dict[str, int]] | None = None
    """Cases to run -> how many of them enter each phase of the suite's work (llama-compress:
    calibration, projection, re-training, evaluation), printed before the first case so a
    reader sees where the time will go."""
    requires: tuple[str, ...] = ()
    """Modules beyond the core install that every run needs (the ``models`` extra's
    ``transformers``...), by import name: the CLI checks them before reading the config, whose
    validation may already import them, and names the set-up command for a missing one."""


def case_key(case: dict[str, Any]) -> str:
    """Stable identity of a case, used to skip finished cases on ``--resume``."""
    return json.dumps(case, sort_keys=True, separators=(",", ":"), default=str)


def shard_of(case: dict[str, Any], keys: Sequence[str], shards: int) -> int:
    """Which of ``shards`` shards runs ``case``: a hash of its ``keys`` fields (of the whole
    case without keys), the same on every machine and in every process."""
    what = case_key({k: case.get(k) for k in keys} if keys else case)
    return int(hashlib.sha1(what.encode()).hexdigest(), 16) % shards
