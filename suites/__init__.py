"""Suite definitions: one module defining ``SUITE`` and one YAML config per suite.

``SUITES`` finds every module here that defines a ``SUITE``. Discovery lives in this
package, which no suite imports, so finding suites never loops back into them; suite
modules keep heavy optional imports (transformers, ...) inside functions, so listing suites
stays cheap and works without the optional extras installed.
"""
from __future__ import annotations

import importlib
import pkgutil

from structbench.registry import Registry
from structbench.suite import Suite


def _load() -> None:
    for info in pkgutil.iter_modules(__path__):
        suite = getattr(importlib.import_module(f"{__name__}.{info.name}"), "SUITE", None)
        if isinstance(suite, Suite):
            SUITES.add(suite.name, suite)


SUITES: Registry[Suite] = Registry("suite", loader=_load)
