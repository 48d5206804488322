"""Calibration statistics: the second moment of each targeted linear's inputs over real text.

A calibrated projection (``from_dense(W, gram=G)``, ``structbench.calibrated``) needs, per layer,
``G = X^T X / N`` over ``N`` calibration tokens. Two ways to get them, as in the literature:

* ``dense``: every Gram from the uncompressed model, in one pass (SVD-LLM's default). One
  set serves every family and rho, so a suite computes it once and caches it.
* ``sequential``: decoder layer ``l``'s Grams from the model whose layers ``< l`` are already
  compressed (GPTQ, SVD-LLM's "update"), so each layer is fitted to the inputs it will
  actually see. The layers run one at a time on cached hidden states: the cost is about two
  forward passes, not one per layer.

Inputs shared by several linears (q/k/v read one tensor, gate/up another) are accumulated
once and the Gram object is shared, so memory is one ``n x n`` matrix per distinct input.
Accumulation is float64 across batches; each batch's ``X_b^T X_b`` is a float32 product of a
few thousand rows (relative error ~1e-6), which halves the cost of the pass.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from structbench.config import check_keys, number_list, positive_int
from structbench.errors import StructbenchError
from structbench.cache import torch_save_atomic

MODES = ("dense", "sequential")
OBJECTIVES = ("frobenius", "calibrated")
"""What a projection minimises: ``||W - What||_F``, or the output error on calibration inputs."""
SETTINGS = frozenset({"tokens", "seq_len", "batch_size", "damp", "refine_steps"})
"""The calibration settings every suite config has (llama-compress adds ``mode``, ``draws`` and
``seed``)."""
LayerFilter = Callable[[str, nn.Module], bool]


def check_objectives(where: str, objectives: Any) -> list[str]:
    """A config's list of objectives: non-empty, distinct, each one of ``OBJECTIVES``."""
    if not isinstance(objectives, list) or not objectives or not all(o in OBJECTIVES for o in objectives) \
            or len(set(objectives)) != len(objectives):
        raise StructbenchError(f"{where} must be a non-empty list of distinct objectives from {list(OBJECTIVES)}, "
                               f"got {objectives!r}")
    return objectives


def check_settings(where: str, calib: Any, keys: frozenset[str] = SETTINGS) -> None:
    """A config's ``calibration`` mapping: exactly ``keys``, each value in range."""
    if not isinstance(calib, dict):
        raise StructbenchError(f"{where} must be a mapping with keys {sorted(keys)}")
    check_keys(where, calib, keys)
    missing = sorted(keys - set(calib))
    if missing:
        raise StructbenchError(f"{where} lacks {missing}")
    for key in ("tokens", "seq_len", "batch_size"):
        number_list(f"{where}.{key}", [calib[key]], integer=True)
    number_list(f"{where}.refine_steps", [calib["refine_steps"]], integer=True, low=-1)
    damp = calib["damp"]
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 <= damp < float("inf"):
        raise StructbenchError(f"{where}.damp must be a number >= 0, got {damp!r}")
    if "mode" in keys and calib["mode"] not in MODES:
        raise StructbenchError(f"{where}.mode {calib['mode']!r} not understood; accepted: {', '.join(MODES)}")
    if "draws" in keys:
        positive_int(f"{where}.draws", calib["draws"])
    if "seed" in keys:
        number_list(f"{where}.seed", [calib["seed"]], integer=True, low=-1)
    if calib["tokens"] < calib["seq_len"]:
        raise StructbenchError(f"{where}.tokens ({calib['tokens']}) must be >= seq_len ({calib['seq_len']})")


@dataclass(frozen=True)
class Calibration:
    """Calibration text and how to run it: ``token_ids`` cut into sequences of ``seq_len``,
    each fed after ``prefix`` (the tokenizer's BOS where it adds one, ``evaluation.bos_prefix``),
    ``batch_size`` sequences per forward, Grams from the ``mode`` above."""

    token_ids: torch.Tensor
    seq_len: int = 512
    batch_size: int = 8
    mode: str = "dense"
    prefix: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise StructbenchError(f"calibration mode {self.mode!r} not understood; accepted: {', '.join(MODES)}")
        for name in ("seq_len", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StructbenchError(f"calibration {name} must be a positive integer, got {value!r}")
        if len(self.token_ids) < self.seq_len:
            raise StructbenchError(f"calibration needs at least seq_len={self.seq_len} tokens, got {len(self.token_ids)}")

    def batches(self, device: torch.device | str) -> Iterator[torch.Tensor]:
        """``(batch, prefix + seq_len)`` id tensors covering ``len(token_ids) // seq_len`` whole
        sequences."""
        from structbench.models.evaluation import with_prefix

        n_seq = len(self.token_ids) // self.seq_len
        seqs = self.token_ids[: n_seq * self.seq_len].view(n_seq, self.seq_len)
        for start in range(0, n_seq, self.batch_size):
            yield with_prefix(seqs[start : start + self.batch_size], self.prefix).to(device)


def train_token_ids(tokenizer: Any, tokens: int, what: str, seed: int | None = None) -> torch.Tensor:
    """``tokens`` ids of the Wikipedia ``train`` split (never ``test``, which perplexity reads):
    its articles in title order, or shuffled by ``seed``; asking for more than the split holds
    is an error naming the request ``what`` (``"retrain.tokens=400000"``)."""
    from structbench.models.evaluation import text_token_ids
    from structbench.models.wikitext import wiki_articles

    articles = wiki_articles("train")
    if seed is not None:
        random.Random(seed).shuffle(articles)
    ids = text_token_ids(tokenizer, articles, tokens)
    if len(ids) < tokens:
        raise StructbenchError(f"{what} exceeds the {len(ids)} tokens of the Wikipedia train split")
    return ids


def token_sha256(ids: torch.Tensor) -> str:
    """SHA-256 of token ids as little-endian int64 bytes: what identifies a calibration text."""
    return hashlib.sha256(ids.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()


@dataclass(frozen=True)
class CalibrationDraw:
    """One of several disjoint samples of calibration text (``index`` counts from 0), chosen by
    ``seed``; ``sha256`` identifies its token ids in rows and cache keys."""

    index: int
    seed: int
    token_ids: torch.Tensor
    sha256: str


def calibration_draws(tokenizer: Any, tokens: int, draws: int = 1, seed: int = 0) -> list[CalibrationDraw]:
    """``draws`` disjoint samples of ``tokens`` train-split ids: the split's articles shuffled by
    ``seed`` and joined, draw ``k`` the ``k``-th run of ``tokens`` ids. Each draw is therefore a
    random set of articles, no token is in two draws, and draw ``k`` is the same whatever
    ``draws`` is (the stream's prefix), so a run with more draws reuses the others' Grams."""
    ids = train_token_ids(tokenizer, draws * tokens,
                          f"calibration.draws x calibration.tokens = {draws} x {tokens} = {draws * tokens} tokens", seed)
    return [CalibrationDraw(k, seed, chunk, token_sha256(chunk)) for k, chunk in enumerate(ids.split(tokens))]


class GramCollector:
    """Forward pre-hooks that accumulate ``X^T X`` of the inputs of ``modules``.

    Modules fed the very same tensor in a forward share one accumulator (found on the first
    batch, by identity while the collector holds a reference to every input of the batch,
    so a freed tensor's reused memory can never alias two inputs)."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = dict(modules)
        self.leader: dict[str, str] = {}
        self._sums: dict[str, torch.Tensor] = {}
        self._tokens: dict[str, int] = {}
        self._batch: list[tuple[torch.Tensor, str]] = []
        self._first = True
        self._handles: list[Any] = []

    def __enter__(self) -> "GramCollector":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._batch.clear()

    def next_batch(self) -> None:
        """Call after each forward: the groups are known once one batch has been seen."""
        self._first = self._first and not self.leader
        self._batch.clear()

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if self._first:
                leader = next((lead for t, lead in self._batch if t is x), name)
                self.leader[name] = leader
                self._batch.append((x, leader))
            if self.leader.get(name, name) != name:
                return
            rows = x.detach().reshape(-1, x.shape[-1]).float()
            update = (rows.T @ rows).to(torch.float64)
            if name in self._sums:
                self._sums[name] += update
            else:
                self._sums[name] = update
            self._tokens[name] = self._tokens.get(name, 0) + rows.shape[0]

        return hook

    def grams(self) -> dict[str, torch.Tensor]:
        """Name -> ``X^T X / N`` (float64, on the CPU); members of a group share one tensor."""
        missing = sorted(set(self.modules) - set(self.leader))
        if missing:
            raise StructbenchError(f"calibration: no input reached {missing[:3]}{'...' if len(missing) > 3 else ''}")
        out = {lead: (s / self._tokens[lead]).cpu() for lead, s in self._sums.items()}
        return {name: out[self.leader[name]] for name in self.modules}


def _targets(model: nn.Module, include: LayerFilter) -> dict[str, nn.Module]:
    found = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and include(name, m)}
    if not found:
        raise StructbenchError("calibration: no nn.Linear layer matches the selection")
    return found


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _decoder(model: nn.Module) -> nn.Module:
    """The decoder without the LM head (``model.model`` for Llama-style models)."""
    return getattr(model, "base_model", model)


@torch.no_grad()
def collect_grams(model: nn.Module, calibration: Calibration, include: LayerFilter) -> dict[str, torch.Tensor]:
    """Dense mode: one pass of the model's decoder (no LM head) over the calibration text."""
    with GramCollector(_targets(model, include)) as collector:
        for ids in calibration.batches(_device(model)):
            _decoder(model)(input_ids=ids)
            collector.next_batch()
    return collector.grams()


class _Stop(Exception):
    """Raised by the hook that captures the first decoder layer's inputs."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's layer list (``model.model.layers`` for Llama-style models)."""
    layers = getattr(_decoder(model), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise StructbenchError("sequential calibration needs a decoder with a .layers list (Llama-style causal LM)")
    return layers


def _layer_inputs(model: nn.Module, calibration: Calibration) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """Per batch: the hidden states entering decoder layer 0 and the keyword arguments the
    decoder passes every layer (mask, rotary embeddings, positions)."""
    first = decoder_layers(model)[0]
    captured: list[tuple[torch.Tensor, dict[str, Any]]] = []

    def catch(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _Stop

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for ids in calibration.batches(_device(model)):
            try:
                _decoder(model)(input_ids=ids, use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def sequential_grams(
    model: nn.Module,
    calibration: Calibration,
    layer_filter: Callable[[int], LayerFilter | None],
    on_layer: Callable[[int, dict[str, torch.Tensor]], None],
) -> None:
    """Sequential mode: for each decoder layer ``l`` with ``layer_filter(l)`` not None, collect
    the Grams of its matching linears from the current (partly compressed) model's inputs,
    call ``on_layer(l, grams)`` (which compresses it), then run the layer as it now is to make
    the next layer's inputs. Layers after the last selected one are not run."""
    layers = decoder_layers(model)
    selected = [l for l in range(len(layers)) if layer_filter(l) is not None]
    if not selected:
        raise StructbenchError("sequential calibration: no decoder layer selected")
    states = _layer_inputs(model, calibration)
    prefix = _prefix(model, layers)
    for index in range(selected[-1] + 1):
        layer = layers[index]
        include = layer_filter(index)
        if include is not None:
            targets = {f"{prefix}{index}.{name}": m for name, m in layer.named_modules()
                       if isinstance(m, nn.Linear) and include(f"{prefix}{index}.{name}", m)}
            with GramCollector(targets) as collector:
                for hidden, kwargs in states:
                    layer(hidden, **kwargs)
                    collector.next_batch()
            on_layer(index, collector.grams())
        if index < selected[-1]:
            states = [(_hidden(layer(hidden, **kwargs)), kwargs) for hidden, kwargs in states]


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _prefix(model: nn.Module, layers: nn.ModuleList) -> str:
    """Qualified name prefix of the layer list inside ``model`` (``model.layers.``)."""
    for name, module in model.named_modules():
        if module is layers:
            return f"{name}." if name else ""
    raise StructbenchError("decoder layer list not found in the model")


def gram_bytes(grams: Mapping[str, torch.Tensor]) -> int:
    """Memory the distinct Gram matrices hold (shared ones once)."""
    return sum(g.numel() * g.element_size() for g in {id(g): g for g in grams.values()}.values())



def grams_key(model: str, calibration_sha256: str, seq_len: int, mode: str, layers: Any = "all",
              projections: Any = "all") -> dict[str, Any]:
    """Everything that changes a set of Grams (the batch size only reorders float32 sums): the
    calibration text by its token ids' SHA-256, so each draw has its own file. ``layers`` and
    ``projections`` are ``"all"`` or lists, compared as sets, so that suites asking for the
    same layers share one file."""
    def canonical(value: Any) -> Any:
        return value if value == "all" else sorted(set(value))

    return {"model": model, "calibration_sha256": calibration_sha256, "seq_len": seq_len, "mode": mode,
            "layers": canonical(layers), "projections": canonical(projections), "format": 2}


def stored_grams(folder: Path, key: dict[str, Any],
                 collect: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], float | None]:
    """The Grams stored under ``folder`` for ``key``, or ``collect()``ed now and stored (written
    to a temporary file and renamed, so an interrupted save never looks finished); with the
    seconds collecting took, None when they were loaded. Shared Grams stay shared on disk."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = folder / f"grams-{digest}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True), None
    start = time.perf_counter()
    grams = collect()
    seconds = time.perf_counter() - start
    torch_save_atomic(path, grams)
    return grams, seconds
