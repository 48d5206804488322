"""Loading a Hugging Face causal LM and its tokenizer: a built-in one (SmolLM2, Gemma3) or any
local folder.

There is no model hub on the machines this runs on: the built-in models come from their pip
packages' GGUF files, converted once to a safetensors cache (``structbench.models.weights``);
any other model is a folder holding ``config.json``, weights and a tokenizer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from structbench.errors import StructbenchError
from structbench.models import weights as model_weights


def check_model_name(name: Any, where: str) -> None:
    """One error line unless ``name`` is a built-in causal LM whose files are installed intact
    (``weights.require``) or an existing folder."""
    if name in model_weights.CAUSAL_LMS:
        model_weights.require(name)
    elif not (isinstance(name, str) and Path(name).is_dir()):
        raise StructbenchError(f"{where} {name!r}: give one of {', '.join(model_weights.CAUSAL_LMS)} or a folder "
                               "holding a Hugging Face causal LM (config.json, weights, tokenizer)")


def model_key(name: str) -> str:
    """A name that identifies the model's weights in cache keys (folders by absolute path)."""
    return str(Path(name).resolve()) if Path(name).is_dir() else name


def load_tokenizer(name: str) -> Any:
    """The model's tokenizer alone (no weights loaded), with a pad token."""
    from transformers import AutoTokenizer

    folder = model_weights.ensure_cache(name) if name in model_weights.CAUSAL_LMS else name
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_config(name: str) -> Any:
    """The model's Hugging Face config alone (no weights loaded)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_weights.ensure_cache(name) if name in model_weights.CAUSAL_LMS else name))


def load_model(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """``(model, tokenizer)`` in eval mode: a built-in model from its safetensors cache, or a folder."""
    if name in model_weights.CAUSAL_LMS:
        model, tokenizer = model_weights.load_builtin(name, dtype)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
