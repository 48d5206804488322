"""The contract between the runner and a suite, and the suite registry.

Every ``suites/<name>.py`` module that defines ``SUITE`` is found automatically. A suite
is data plus four functions: ``validate`` (YAML -> resolved config, or a
``StructbenchError`` naming the bad key), ``expand`` (config -> cases), ``run_case``
(one case -> result rows) and ``report`` (stored rows -> report sections). The runner
(``structbench.runner``) owns everything else: run folders, resume, progress,
environment capture. Suites never render; reports never measure.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from structbench.registry import Registry


@dataclass(frozen=True)
class Metric:
    """A measured column: its unit and which way is better, so tables can draw arrows."""

    unit: str = ""
    higher_is_better: bool | None = None
    description: str = ""


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
    config: dict[str, Any]
    log: Callable[[str], None] = print


@dataclass(frozen=True)
class Suite:
    name: str
    version: str  # bump whenever what a row means changes
    description: str
    config_path: Path  # the default YAML config
    validate: Callable[[dict[str, Any]], dict[str, Any]]
    expand: Callable[[dict[str, Any], bool], list[dict[str, Any]]]  # (config, quick) -> cases
    run_case: Callable[[dict[str, Any], RunContext], list[dict[str, Any]]]
    report: Callable[[Any], list[Any]] | None = None  # (RunData) -> report sections
    metrics: dict[str, Metric] = field(default_factory=dict)


def case_key(case: dict[str, Any]) -> str:
    """Stable identity of a case, used to skip finished cases on ``--resume``."""
    return json.dumps(case, sort_keys=True, separators=(",", ":"), default=str)


def _load_suites() -> None:
    """Register ``SUITE`` of every module in the ``suites`` package under the suite's name.

    Suite modules keep heavy optional imports (transformers, ...) inside functions, so
    listing suites stays cheap and works without the optional extras installed.
    """
    import importlib
    import pkgutil

    import suites

    for info in pkgutil.iter_modules(suites.__path__):
        suite = getattr(importlib.import_module(f"suites.{info.name}"), "SUITE", None)
        if isinstance(suite, Suite):
            SUITES.add(suite.name, suite)


SUITES: Registry[Suite] = Registry("suite", loader=_load_suites)
