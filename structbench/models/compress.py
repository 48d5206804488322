"""Compress a Hugging Face causal LM with a structured family, fine-tune it, save and reload it.

The user-facing API behind the ``llama-compress`` suite::

    from structbench.models.compress import compress, finetune, save_compressed, load_compressed
    records = compress(model, "blast", 0.5, layers=range(30), cache_file="blast-0.5.pt")
    finetune(model, train_ids, steps=200)            # structured factors and norms only
    save_compressed(model, "out/", tokenizer)
    model = load_compressed("out/")                  # same modules, same outputs

Projections (BLAST's PrecGD above all) take minutes per model, so ``compress`` can keep
the projected factors in ``cache_file`` and rebuild from it without projecting again.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from structbench.errors import StructbenchError
from structbench.models.calibration import OBJECTIVES, Calibration, collect_grams, sequential_grams
from structbench.models.evaluation import with_prefix
from structbench.families import get_family
from structbench.cache import torch_save_atomic
from structbench.structured import StructuredLinear
from structbench.swap import SwapRecord, swap_linears

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The seven linear maps of a Llama decoder layer (attention q/k/v/o, MLP gate/up/down)."""

STRUCTURE_FILE = "structbench.json"
STRUCTURE_FORMAT = 3
"""Goes up when ``structbench.json`` changes (3: each layer records its family's
``layout_version``; 2 implied Pixelfly's layout 2, 1 every family's layout 1)."""
WEIGHTS_FILE = "model.safetensors"


def decoder_filter(layers: Iterable[int] | None, projections: Sequence[str] = LLAMA_PROJECTIONS) -> Callable[[str, nn.Module], bool]:
    """Matches ``...layers.<i>.<self_attn|mlp>.<projection>`` for ``i`` in ``layers`` (all if None)."""
    unknown = sorted(set(projections) - set(LLAMA_PROJECTIONS))
    if unknown or not projections:
        raise StructbenchError(f"projections {unknown or '[]'} not understood; accepted: {', '.join(LLAMA_PROJECTIONS)}")
    pattern = re.compile(rf"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.({'|'.join(projections)})$")
    wanted = None if layers is None else set(layers)

    def match(name: str, layer: nn.Module) -> bool:
        found = pattern.search(name)
        return found is not None and (wanted is None or int(found.group(1)) in wanted)

    return match


def compress(
    model: nn.Module,
    family: str,
    rho: float,
    *,
    layers: Iterable[int] | None = None,
    projections: Sequence[str] = LLAMA_PROJECTIONS,
    objective: str = "frobenius",
    calibration: Calibration | Mapping[str, torch.Tensor] | None = None,
    cache_file: str | Path | None = None,
    hparams: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    **projection_options: Any,
) -> list[SwapRecord]:
    """Replace the chosen decoder projections of ``model`` by ``family`` at ``rho``, in place:
    each at the family's own choice for ``rho``, or with ``hparams`` by layer name (a
    ``structbench.swap.allocate_linears`` allocation meeting ``rho`` over them all).

    Each weight is projected onto the family (``from_dense`` with ``projection_options``,
    e.g. ``steps=`` for BLAST's PrecGD). ``objective`` is ``frobenius`` (``||W - What||_F``)
    or ``calibrated`` (``||(W - What) X||_F`` on calibration inputs). ``calibration`` is a
    ``Calibration`` (text and mode; Grams are collected here) or precomputed dense-mode Grams
    by layer name; with it every record also carries the activation-weighted error. A
    sequential ``Calibration`` compresses layer by layer, each fitted to the inputs the
    already compressed layers before it produce. With ``cache_file``, a finished compression
    is saved there and a later call with the same file restores the factors instead of
    projecting; the caller names the file after everything that changes the result.
    """
    if objective not in OBJECTIVES:
        raise StructbenchError(f"objective {objective!r} not understood; accepted: {', '.join(OBJECTIVES)}")
    include = decoder_filter(layers, projections)
    cache = Path(cache_file) if cache_file is not None else None
    if cache is not None and cache.is_file():  # restoring needs no calibration: the factors are fitted
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        swap_linears(model, family, rho, include=include, hparams=hparams, project=False, measure_error=False)
        modules = dict(model.named_modules())
        if set(saved["state"]) != set(_structured(model)):
            raise StructbenchError(f"{cache} holds other layers than this model's {family} layers; delete it")
        for name, state in saved["state"].items():
            modules[name].load_state_dict(state)
        return [_record(r) for r in saved["records"]]
    calibrated = objective == "calibrated"
    if calibrated and calibration is None:
        raise StructbenchError("the calibrated objective needs calibration text or Grams")
    if isinstance(calibration, Calibration) and calibration.mode == "sequential" and calibrated:
        records: list[SwapRecord] = []
        wanted = None if layers is None else set(layers)

        def layer_filter(index: int) -> Callable[[str, nn.Module], bool] | None:
            return include if wanted is None or index in wanted else None

        def on_layer(index: int, grams: dict[str, torch.Tensor]) -> None:
            records.extend(swap_linears(model, family, rho, include=include_names(grams), hparams=hparams, grams=grams,
                                        calibrated=True, progress=progress, **projection_options))

        sequential_grams(model, calibration, layer_filter, on_layer)
    else:
        grams = collect_grams(model, calibration, include) if isinstance(calibration, Calibration) else calibration
        records = swap_linears(model, family, rho, include=include, hparams=hparams, grams=grams, calibrated=calibrated,
                               progress=progress, **projection_options)
    if cache is not None:
        torch_save_atomic(cache, {"state": {name: m.state_dict() for name, m in _structured(model).items()},
                                  "records": [vars(r) for r in records]})
    return records


def include_names(names: Iterable[str]) -> Callable[[str, nn.Module], bool]:
    """A layer filter matching exactly these qualified names."""
    chosen = set(names)
    return lambda name, layer: name in chosen


def _structured(model: nn.Module) -> dict[str, StructuredLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, StructuredLinear)}


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the structured layers and of the normalisation layers, nothing else.

    Embeddings, the LM head and the uncompressed layers stay at their pretrained values,
    as in the BLAST paper's re-training of a compressed Llama.
    """
    params: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, StructuredLinear) or type(module).__name__.endswith(("RMSNorm", "LayerNorm")):
            params.update({id(p): p for p in module.parameters(recurse=isinstance(module, StructuredLinear))})
    return list(params.values())


def finetune(
    model: nn.Module,
    token_ids: torch.Tensor,
    steps: int,
    *,
    lr: float = 1e-4,
    batch_size: int = 4,
    seq_len: int = 256,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
    prefix: Sequence[int] = (),
) -> list[float]:
    """Next-token training of ``trainable_parameters`` on random windows of ``token_ids``, each
    fed after ``prefix`` (the tokenizer's BOS where it adds one).

    AdamW with a linear decay to zero; returns the loss of every step. The model is
    left in eval mode.
    """
    if len(token_ids) <= seq_len:
        raise StructbenchError(f"finetune needs more than seq_len={seq_len} tokens, got {len(token_ids)}")
    params = trainable_parameters(model)
    if not params:
        raise StructbenchError("finetune: the model has no structured layers to train")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    device = params[0].device
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 - t / steps)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    try:
        for step in range(steps):
            starts = torch.randint(0, len(token_ids) - seq_len, (batch_size,), generator=generator)
            x = with_prefix(torch.stack([token_ids[s:s + seq_len] for s in starts.tolist()]), prefix).to(device)
            loss = model(input_ids=x, labels=x).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step + 1, losses[-1])
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
    return losses


def save_compressed(model: nn.Module, folder: str | Path, tokenizer: Any = None) -> Path:
    """Write config, tokenizer, the structure of every structured layer and all weights.

    ``save_pretrained`` cannot rebuild structured layers, so the structure goes to
    ``structbench.json`` and the weights to one safetensors file (tied tensors once).
    """
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    structure = {name: {"family": m.family, "layout": m.layout_version, "in_features": m.in_features,
                        "out_features": m.out_features, "bias": m.bias is not None, "hparams": m.hparams}
                 for name, m in _structured(model).items()}
    (folder / STRUCTURE_FILE).write_text(json.dumps({"format": STRUCTURE_FORMAT, "layers": structure}, indent=1))
    save_model(model, str(folder / WEIGHTS_FILE))
    return folder


def _record(saved: dict[str, Any]) -> SwapRecord:
    """A cached layer's record; caches written before the achieved fraction was named
    ``rho_actual`` store it as ``rho``."""
    fields = {("rho_actual" if k == "rho" else k): v for k, v in saved.items()}
    return SwapRecord(**{**fields, "shape": tuple(fields["shape"])})


def _saved_layout(spec: dict[str, Any], file_format: int | None) -> int:
    """The layout a layer was saved in: recorded per layer since format 3, implied before."""
    if "layout" in spec:
        return int(spec["layout"])
    return 2 if spec["family"] == "pixelfly" and file_format == 2 else 1


def load_compressed(folder: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model ``save_compressed`` wrote, in eval mode: dense skeleton, structured layers
    rebuilt from ``structbench.json``, then every weight loaded strictly."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / STRUCTURE_FILE).is_file():
        raise StructbenchError(f"{folder} is not a compressed model folder (no {STRUCTURE_FILE}); see save_compressed")
    saved = json.loads((folder / STRUCTURE_FILE).read_text())
    layers = saved["layers"]
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    for name, spec in layers.items():
        family = get_family(spec["family"])
        layout = _saved_layout(spec, saved.get("format"))
        if layout != family.layout_version:
            raise StructbenchError(f"{folder}: layer {name} ({family.family}) was saved in layout {layout}, this "
                                   f"version reads layout {family.layout_version}; compress and save it again")
        parent_name, _, child = name.rpartition(".")
        layer = family(spec["in_features"], spec["out_features"], bias=spec["bias"], **spec["hparams"])
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    load_model(model, str(folder / WEIGHTS_FILE), strict=True)
    return model.to(dtype).eval()
