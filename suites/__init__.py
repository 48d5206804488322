"""The suites, one folder each: ``suites/<name>/suite.py`` defines ``SUITE``, ``default.yaml`` (and
any other ``*.yaml`` beside it) its configs, ``report.py`` what its stored runs render as.

``SUITES`` finds every folder here whose ``suite.py`` defines a ``SUITE``; ``REPORTS``,
``SUMMARIES`` and ``SUBTITLES`` gather the ``report.py`` mappings (suite name -> function of a stored run;
``TABLES``: suite name -> table name -> function),
imported without the suite's own module, so a report can be rebuilt where the suite could
not run. Discovery lives in this package, which no suite imports, so finding suites never
loops back into them; suite modules keep heavy optional imports (transformers, ...) inside
functions, so listing suites stays cheap and works without the optional extras installed.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
from typing import Any, Callable

from structbench.registry import Registry
from structbench.suite import Suite


def _folders() -> list[str]:
    return [info.name for info in pkgutil.iter_modules(__path__) if info.ispkg]


def _load() -> None:
    for folder in _folders():
        suite = getattr(importlib.import_module(f"{__name__}.{folder}.suite"), "SUITE", None)
        if isinstance(suite, Suite):
            SUITES.add(suite.name, suite)


SUITES: Registry[Suite] = Registry("suite", loader=_load)


@functools.cache
def _report_mapping(name: str) -> dict[str, Callable[..., Any]]:
    """Suite name -> function, from the ``name`` mapping (``REPORTS`` or ``SUMMARIES``) of every
    ``suites/<folder>/report.py``."""
    found: dict[str, Callable[..., Any]] = {}
    for folder in _folders():
        module = f"{__name__}.{folder}.report"
        if importlib.util.find_spec(module) is not None:
            found.update(getattr(importlib.import_module(module), name, {}))
    return found


def reports() -> dict[str, Callable[..., Any]]:
    """Suite name -> ``report(run) -> list[Section]``."""
    return _report_mapping("REPORTS")


def tables() -> dict[str, dict[str, Callable[..., Any]]]:
    """Suite name -> published table name -> ``table(run) -> DataFrame``: the tables the docs
    quote between ``results:`` markers (``structbench.regenerate``)."""
    return _report_mapping("TABLES")


def subtitles() -> dict[str, Callable[..., Any]]:
    """Suite name -> ``subtitle(run) -> str``: what the run measured, from its own config (a
    suite without one is described by its stored description)."""
    return _report_mapping("SUBTITLES")


def summaries() -> dict[str, Callable[..., Any]]:
    """Suite name -> ``summary(run) -> DataFrame``, the headline table the terminal shows."""
    return _report_mapping("SUMMARIES")
