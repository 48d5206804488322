"""YAML suite configs: loading with ``include:``, deep merging, and one-line validation errors."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from structbench.errors import StructbenchError


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; lists and scalars in ``override`` replace the base value."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping; ``include: other.yaml`` (relative to this file) is loaded first and
    this file's keys override it, as lm-evaluation-harness task configs do."""
    path = Path(path).resolve()
    if path in _seen:
        raise StructbenchError(f"config include cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    if not path.is_file():
        raise StructbenchError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise StructbenchError(f"malformed YAML in {path}{where}: {problem}") from None
    if not isinstance(data, dict):
        raise StructbenchError(f"config {path} must be a YAML mapping of keys to values, got {type(data).__name__}")
    include = data.pop("include", None)
    if include is None:
        return data
    if not isinstance(include, str):
        raise StructbenchError(f"config {path}: include must be a file name, got {include!r}")
    return deep_merge(load_config(path.parent / include, (*_seen, path)), data)


def check_keys(where: str, given: dict[str, Any], known: Iterable[str]) -> None:
    extra = sorted(set(given) - set(known))
    if extra:
        raise StructbenchError(f"{where}: unknown key(s) {extra}; accepted: {sorted(known)}")


def number_list(where: str, value: Any, *, integer: bool = False, low: float = 0.0, high: float = float("inf")) -> list:
    kinds = (int,) if integer else (int, float)
    if not isinstance(value, list) or not value or not all(
        isinstance(v, kinds) and not isinstance(v, bool) and low < v <= high for v in value
    ):
        what = "integers" if integer else "numbers"
        raise StructbenchError(f"{where} must be a non-empty list of {what} in ({low}, {high}], got {value!r}")
    return value
