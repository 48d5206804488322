"""structbench: benchmark structured weight matrices against dense ones on one footing."""
from structbench.errors import NotApplicable, StructbenchError
from structbench.families import build, get_family, hparams_for, list_families
from structbench.registry import FAMILIES, Registry
from structbench.structured import Fit, StructuredLinear
from structbench.swap import swap_linears

__all__ = [
    "FAMILIES",
    "Fit",
    "NotApplicable",
    "Registry",
    "StructbenchError",
    "StructuredLinear",
    "build",
    "get_family",
    "hparams_for",
    "list_families",
    "swap_linears",
]
