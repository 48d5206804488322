"""The registered families, for everything that uses them: importing this module imports
``matrices/`` (every family file registers itself there), so lookups always see every family,
while the family files themselves import only ``structbench.registry``."""
from __future__ import annotations

from typing import Any

import matrices  # noqa: F401 - registers every family
from structbench.config import distinct
from structbench.errors import StructbenchError
from structbench.registry import FAMILIES


def family_order() -> list[str]:
    """Registered families in the order reports list them: by each class's ``plot_order``,
    then by name, so a new family takes its place without editing any list."""
    return sorted(FAMILIES.names(), key=lambda name: (FAMILIES.get(name).plot_order, name))


def resolve_families(where: str, value: Any, *, with_dense: bool = False) -> list[str]:
    """``all`` (every registered family, in plot order; the dense baseline only if
    ``with_dense``) or a non-empty list of registered names, each checked with a did-you-mean."""
    if value == "all":
        return [f for f in family_order() if with_dense or get_family(f).compressible]
    if not isinstance(value, list) or not value or not all(isinstance(f, str) and f for f in value):
        raise StructbenchError(f"{where} must be 'all' or a non-empty list of family names, got {value!r}")
    for family in value:
        get_family(family)
    return distinct(where, list(value))


def get_family(name: str) -> type:
    return FAMILIES.get(name)


def list_families(pattern: str | None = None) -> list[str]:
    return FAMILIES.names(pattern)


def build(name: str, in_features: int, out_features: int, *, bias: bool = True, device: Any = None,
          dtype: Any = None, **hparams: Any):
    """Construct family ``name`` as a drop-in for ``nn.Linear(in_features, out_features, bias,
    device=, dtype=)``."""
    return get_family(name)(in_features, out_features, bias=bias, **hparams).to(device=device, dtype=dtype)


def hparams_for(name: str, rho: float, *, out_features: int, in_features: int):
    """Hyperparameters of family ``name`` keeping at most ``rho`` of an ``out x in`` dense weight.

    The sizes are keywords: ``build`` takes them in ``nn.Linear``'s order (in, out) and the
    family classmethod in the weight's shape order (out, in), and a name says which is which."""
    return get_family(name).hparams_for(out_features, in_features, rho)
