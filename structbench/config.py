"""YAML suite configs, handled once for every suite: loading with ``include:``, the ``quick:``
overlay, ``families`` resolution, and value checks that fail with one line naming the key.

The ``quick:`` overlay has one meaning everywhere: it is deep-merged over the rest of the
config (``deep_merge``): a mapping merges key by key, a list or scalar replaces the value.
A mapping tagged ``!replace`` replaces the whole mapping instead (kernels' quick ``shapes``
are a smaller set, not extra shapes). Each suite's ``validate`` checks one config; ``resolve``
checks both the full config and its quick overlay, so a typo in either fails any run.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml

from structbench.errors import StructbenchError
from structbench.overrides import apply_overrides
from structbench.yaml_loader import StrictLoader


class Replace(dict):
    """A mapping that ``deep_merge`` puts in place of the base value instead of merging."""


class _Loader(StrictLoader):
    pass


_Loader.add_constructor("!replace", lambda loader, node: Replace(loader.construct_mapping(node, deep=True)))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key (unless tagged ``!replace``); lists and scalars in
    ``override`` replace the base value."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and not isinstance(value, Replace) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = dict(value) if isinstance(value, Replace) else copy.deepcopy(value)
    return out


def load_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping; ``include: other.yaml`` (relative to this file) is loaded first and
    this file's keys override it, as lm-evaluation-harness task configs do."""
    path = Path(path).resolve()
    if path in _seen:
        raise StructbenchError(f"config include cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    if path.is_dir():
        raise StructbenchError(f"config {path} is a folder; give a YAML file (a suite's are in suites/<name>/*.yaml)")
    if not path.is_file():
        raise StructbenchError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except UnicodeDecodeError as err:
        raise StructbenchError(f"config {path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8") from None
    except OSError as err:
        raise StructbenchError(f"config {path} cannot be read: {err.strerror}") from None
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


def resolve(name: str, raw: dict[str, Any], validate: Callable[[dict[str, Any], str], dict[str, Any]], *,
            quick: bool, families: list[str] | None = None, sets: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved config a run uses: ``raw`` without its ``quick:`` key, or with ``quick``
    that overlay merged in; ``families`` (``--families``) replaces the config's in both. Both
    the full and the quick config are validated (``validate(config, where)``, ``where`` naming
    it in messages: ``<suite>`` or ``<suite>.quick``), so a typo in either stops every run.
    ``sets`` (``--set`` assignments) go in before the overlay is split off, so that
    ``quick.key=...`` edits the overlay, and the others again after it is merged: what a user
    sets wins over the quick overlay too."""
    if not isinstance(raw, dict):
        raise StructbenchError(f"{name} config must be a mapping")
    raw = apply_overrides(raw, sets)
    overlay = raw.get("quick") or {}
    if not isinstance(overlay, dict):
        raise StructbenchError(f"{name} config: quick must be a mapping of overrides (deep-merged over the config), "
                               f"got {overlay!r}")
    base = {k: v for k, v in raw.items() if k != "quick"}
    chosen = {"families": families} if families is not None else {}
    full = validate(deep_merge(base, chosen), name)
    plain = [a for a in sets if not a.strip().startswith("quick.")]
    fast = validate(deep_merge(apply_overrides(deep_merge(base, overlay), plain), chosen), f"{name}.quick")
    return fast if quick else full


def check_keys(where: str, given: dict[str, Any], known: Iterable[str], required: Iterable[str] = ()) -> None:
    extra = sorted(set(given) - set(known))
    if extra:
        raise StructbenchError(f"{where}: unknown key(s) {extra}; accepted: {sorted(known)}")
    missing = sorted(set(required) - set(given))
    if missing:
        raise StructbenchError(f"{where} is missing key(s) {missing}")


def section(where: str, value: Any, keys: Iterable[str]) -> dict[str, Any]:
    """A mapping holding exactly ``keys``."""
    keys = set(keys)
    if not isinstance(value, dict):
        raise StructbenchError(f"{where} must be a mapping with keys {sorted(keys)}")
    check_keys(where, value, keys, keys)
    return value


INT_MAX = 2**63 - 1
"""The largest integer a config may give (a count, a size, a seed): torch takes them as 64-bit
integers, so a larger one fails every case with an overflow."""


def number_list(where: str, value: Any, *, integer: bool = False, low: float = 0.0, high: float = float("inf"),
                unique: bool = True) -> list:
    """A non-empty list of finite numbers in ``(low, high]``, distinct when ``unique`` (a list
    of values to sweep: a repeated one would measure the same case twice); integers are
    at most ``INT_MAX``."""
    kinds = (int,) if integer else (int, float)
    high = min(high, INT_MAX) if integer else high
    if not isinstance(value, list) or not value or not all(
        isinstance(v, kinds) and not isinstance(v, bool) and math.isfinite(v) and low < v <= high for v in value
    ):
        what = "integers" if integer else "numbers"
        span = f"({low}, {'2**63 - 1' if high == INT_MAX else high}]" if math.isfinite(high) else f"({low}, inf), finite"
        raise StructbenchError(f"{where} must be a non-empty list of {what} in {span}, got {value!r}")
    return distinct(where, value) if unique else value


def distinct(where: str, values: list[Any]) -> list[Any]:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise StructbenchError(f"{where} lists {', '.join(repeated)} more than once; give each value once")
    return values


def positive_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= INT_MAX:
        raise StructbenchError(f"{where} must be a positive integer (at most 2**63 - 1), got {value!r}")
    return value


def optional_positive_int(where: str, value: Any) -> int | None:
    return None if value is None else positive_int(where, value)


def non_negative_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT_MAX:
        raise StructbenchError(f"{where} must be an integer in [0, 2**63 - 1], got {value!r}")
    return value


def positive_number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise StructbenchError(f"{where} must be a positive number, got {value!r}")
    return float(value)


def fraction(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise StructbenchError(f"{where} must be a number in [0, 1), got {value!r}")
    return float(value)


def boolean(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise StructbenchError(f"{where} must be true or false, got {value!r}")
    return value


def betas(where: str, value: Any) -> list[float]:
    if not (isinstance(value, list) and len(value) == 2):
        raise StructbenchError(f"{where} must be [beta1, beta2], got {value!r}")
    return [fraction(f"{where}[{i}]", v) for i, v in enumerate(value)]
