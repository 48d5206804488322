"""Loading a Hugging Face causal LM and its tokenizer: the built-in SmolLM2 or any local folder.

There is no model hub on the machines this runs on: SmolLM2 comes from its pip package's GGUF,
converted once to a safetensors cache (``structbench.models.weights``); any other model is a
folder holding ``config.json``, weights and a tokenizer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from structbench.errors import StructbenchError
from structbench.models import weights as model_weights


def check_model_name(name: Any, where: str) -> None:
    """One error line unless ``name`` is the built-in SmolLM2 or an existing folder."""
    if name not in model_weights.MODELS and not (isinstance(name, str) and Path(name).is_dir()):
        raise StructbenchError(f"{where} {name!r}: give {model_weights.SMOLLM2} or a folder holding a "
                               "Hugging Face causal LM (config.json, weights, tokenizer)")


def model_key(name: str) -> str:
    """A name that identifies the model's weights in cache keys (folders by absolute path)."""
    return str(Path(name).resolve()) if Path(name).is_dir() else name


def load_tokenizer(name: str) -> Any:
    """The model's tokenizer alone (no weights loaded), with a pad token."""
    from transformers import AutoTokenizer

    folder = model_weights.ensure_smollm2_cache() if name == model_weights.SMOLLM2 else name
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """``(model, tokenizer)`` in eval mode: SmolLM2 from its safetensors cache, or a folder."""
    if name == model_weights.SMOLLM2:
        model, tokenizer = model_weights.load_smollm2(dtype)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
