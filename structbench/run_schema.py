"""The shape a stored run must have to be read: ``run.json`` (``RUN``) and one ``rows.jsonl``
row (``ROW``), checked when a run is loaded so that a folder someone else made or edited is
refused with one line naming the file and the field, never a traceback in a report.

A handful of typed fields is all a reader relies on, so the checks are written here as small
combinators rather than taken from a JSON Schema validator: that keeps the core install free
of another dependency, and each problem comes back as one ``field.path: expected ..., got ...``
phrase ready for a warning. Keys not named here are allowed (a newer writer may add some);
the ones named are checked wherever they appear.
"""
from __future__ import annotations

import json
from typing import Any, Callable

Check = Callable[[Any, str], "str | None"]
"""(value, its dotted path) -> the problem as one phrase, or None when the value fits."""

ROW_STATUSES = ("ok", "skipped", "error")
RUN_STATUSES = ("running", "complete", "interrupted", "failed")
RESUME_CLI = ("device", "dtype", "threads", "quick", "seed")
"""The ``cli`` options a run must have stored for ``--resume`` to rebuild how it ran."""


def shown(value: Any) -> str:
    """A value for a message, as JSON writes it, cut short (a hostile file's strings can be long)."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _problem(path: str, expected: str, value: Any) -> str:
    return f"{path + ': ' if path else ''}expected {expected}, got {shown(value)}"


def typed(expected: str, *kinds: type) -> Check:
    """A value of one of ``kinds``; a bool is never taken for a number."""
    def check(value: Any, path: str) -> str | None:
        fits = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        return None if fits else _problem(path, expected, value)
    return check


def integer(low: int) -> Check:
    def check(value: Any, path: str) -> str | None:
        problem = typed(f"an integer >= {low}", int)(value, path)
        return problem or (None if value >= low else _problem(path, f"an integer >= {low}", value))
    return check


def choice(*values: Any) -> Check:
    """One of ``values``, of the same JSON type (``true`` is not ``1``)."""
    def check(value: Any, path: str) -> str | None:
        fits = any(type(value) is type(v) and value == v for v in values)
        return None if fits else _problem(path, f"one of {', '.join(shown(v) for v in values)}", value)
    return check


def nullable(inner: Check) -> Check:
    return lambda value, path: None if value is None else inner(value, path)


def list_of(item: Check) -> Check:
    def check(value: Any, path: str) -> str | None:
        if not isinstance(value, list):
            return _problem(path, "a JSON list", value)
        return next((p for i, v in enumerate(value) if (p := item(v, f"{path}[{i}]"))), None)
    return check


def mapping(fields: dict[str, Check] | None = None, required: tuple[str, ...] = (), values: Check | None = None) -> Check:
    """A JSON object holding ``required``; ``fields`` checked where present, every other
    value by ``values`` when given."""
    fields = fields or {}

    def check(value: Any, path: str) -> str | None:
        if not isinstance(value, dict):
            return _problem(path, "a JSON object", value)
        missing = [k for k in required if k not in value]
        if missing:
            return f"{_join(path, missing[0])}: missing"
        for key, item in value.items():
            inner = fields.get(key, values)
            problem = inner(item, _join(path, key)) if inner is not None else None
            if problem:
                return problem
        return None
    return check


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


TEXT = typed("a string", str)
WORDS = list_of(TEXT)
BOOLEAN = typed("true or false", bool)
WHEN = nullable(TEXT)

RUN = mapping({
    "schema_version": choice(1, 2),
    "suite": mapping({"name": TEXT, "version": TEXT, "description": TEXT}, required=("name", "version")),
    "schema": nullable(mapping({"case_keys": WORDS, "headline": WORDS, "hidden": WORDS, "compare_on": WORDS,
                                "shard_keys": WORDS, "cost_keys": WORDS, "samples": mapping(values=TEXT)})),
    "config": mapping(),
    "cli": mapping({"device": TEXT, "dtype": TEXT, "threads": integer(1), "quick": BOOLEAN, "seed": typed("an integer", int),
                    "retry_noisy": integer(0), "shard": nullable(list_of(integer(0))), "families": WHEN,
                    "config": WHEN, "set": WORDS}),
    "git": mapping({"commit": WHEN, "dirty": nullable(BOOLEAN)}),
    "env": mapping(),
    "seed": typed("an integer", int),
    "started": WHEN,
    "finished": WHEN,
    "status": choice(*RUN_STATUSES),
    "n_cases": nullable(integer(0)),
    "n_done": integer(0),
    "metrics": mapping(values=mapping({"unit": TEXT, "higher_is_better": nullable(BOOLEAN), "description": TEXT})),
    "about": nullable(mapping()),
    "reliability": nullable(mapping({"unreliable": BOOLEAN, "reasons": WORDS})),
    "resumed": WORDS,
    "upgraded": list_of(mapping()),
    "threads_changed": list_of(mapping()),
    "merged_from": WORDS,
}, required=("suite", "config", "cli", "status"))

ROW = mapping({"case_key": TEXT, "status": choice(*ROW_STATUSES), "reason": nullable(TEXT)},
              required=("case_key", "status"))


def problem(value: Any, check: Check) -> str | None:
    """What keeps ``value`` from matching ``check`` (the first problem found), or None."""
    return check(value, "")
