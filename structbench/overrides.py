"""``--set key.sub=value`` overrides of a suite's YAML config, for suite-specific options
(``--set model=...``, ``--set rhos=[0.5]``) without the command line knowing any suite."""
from __future__ import annotations

import copy
from typing import Any, Sequence

import yaml

from structbench.errors import StructbenchError
from structbench.yaml_loader import StrictLoader


def apply_overrides(config: dict[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """A copy of ``config`` with each ``dotted.key=value`` set; values are parsed as YAML.

    Intermediate mappings are created as needed; whether a key is known is left to the
    suite's ``validate``, which names the accepted keys.
    """
    out = copy.deepcopy(config)
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise StructbenchError(f"--set {assignment!r}: expected key=value or key.sub=value")
        try:
            value = yaml.load(text, Loader=StrictLoader) if text.strip() else ""
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise StructbenchError(f"--set {assignment!r}: value is not valid YAML ({problem})") from None
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise StructbenchError(f"--set {assignment!r}: {part!r} holds {child!r}, not a mapping")
            node = child
        node[path[-1]] = value
    return out
