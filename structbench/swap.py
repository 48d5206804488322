"""Swap chosen ``nn.Linear`` layers of any model for a structured family at a target rho."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from structbench.allocate import Allocation, allocate
from structbench.errors import StructbenchError
from structbench.linalg import relative_error
from structbench.families import get_family
from structbench.structured import ProgressFn, StructuredLinear
from structbench.calibrated import weighted_error

LayerFilter = Callable[[str, nn.Linear], bool]


@dataclass
class SwapRecord:
    """What happened to one layer, so callers can report projection quality per layer."""

    name: str
    shape: tuple[int, int]
    hparams: dict[str, Any]
    rho_actual: float
    rel_error: float | None
    weighted_error: float | None = None
    """``||(W - What) G^{1/2}||_F / ||W G^{1/2}||_F`` on the calibration Gram, when one was given."""


@dataclass(frozen=True)
class Budget:
    """What a set of linears costs against the dense ones they replace: the two quantities a
    budget can hold fixed, which differ for a family whose MACs exceed its parameters."""

    params: int
    """Weight parameters the structures use (``kept_params``; bias excluded)."""
    dense_params: int
    macs: int
    """Multiply-adds of one token through them."""
    dense_macs: int

    @property
    def rho_actual(self) -> float:
        """The achieved kept fraction of the dense parameters (what a target ``rho`` budgets)."""
        return self.params / self.dense_params

    @property
    def macs_ratio(self) -> float:
        """MACs per token relative to the dense linears' (above 1: costs more compute than dense)."""
        return self.macs / self.dense_macs

    @property
    def cr_linear(self) -> float:
        """Compression ratio of these linears: ``1 - rho_actual``."""
        return 1 - self.rho_actual

    def cr_model(self, dense_model_params: int) -> float:
        """Compression ratio of a whole model that holds these linears and, dense, has
        ``dense_model_params`` parameters (embeddings and a tied head once): the parameters
        the structures save over all of the model's. Where the linears are a small part of
        the model (a small LM's embeddings) it is several times smaller than ``cr_linear``."""
        return (self.dense_params - self.params) / dense_model_params


def budget(layers: list[nn.Module]) -> Budget:
    """The ``Budget`` of ``layers``, each a ``StructuredLinear`` or a plain ``nn.Linear`` (kept whole)."""
    params = macs = dense = 0
    for layer in layers:
        size = layer.in_features * layer.out_features
        structured = isinstance(layer, StructuredLinear)
        params += layer.kept_params() if structured else size
        macs += layer.macs_per_token() if structured else size
        dense += size
    return Budget(params, dense, macs, dense)


def _matcher(include: str | LayerFilter | None) -> LayerFilter:
    if include is None:
        return lambda name, layer: True
    if callable(include):
        return include
    pattern = re.compile(include)
    return lambda name, layer: pattern.search(name) is not None


def linear_targets(model: nn.Module, include: str | LayerFilter | None = None) -> dict[str, nn.Linear]:
    """The plain ``nn.Linear`` layers whose qualified name matches ``include`` (a regex or a
    predicate; every one if None), by name in model order: what ``swap_linears`` replaces."""
    match = _matcher(include)
    return {name: mod for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and not isinstance(mod, StructuredLinear) and match(name, mod)}


def allocate_linears(model: nn.Module, family: str, rho: float, *,
                     include: str | LayerFilter | None = None) -> Allocation:
    """The ``Allocation`` of ``family`` over the linears ``include`` matches, meeting ``rho``
    over all of them together (``structbench.allocate``); ``swap_linears(hparams=)`` builds it."""
    targets = linear_targets(model, include)
    if not targets:
        raise StructbenchError(f"allocate_linears: no nn.Linear layer matches {include!r}")
    return allocate(family, {name: (mod.out_features, mod.in_features) for name, mod in targets.items()}, rho)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """What a layer of ``dtype`` is fitted in: a float64 model in float64, any other in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _same_problems(targets: list[tuple[str, nn.Linear]],
                   chosen: Mapping[str, dict[str, Any]]) -> list[list[tuple[str, nn.Linear, dict[str, Any]]]]:
    """The targets grouped into stacks one batched projection can fit: the same shape, bias,
    dtype, device and hyperparameters (``chosen``, by layer name; a model's 30 ``q_proj``
    layers are one stack), each target with its hyperparameters, groups in the order of their
    first layer."""
    groups: dict[tuple[Any, ...], list[tuple[str, nn.Linear, dict[str, Any]]]] = {}
    for name, layer in targets:
        key = (layer.weight.shape, layer.bias is not None, layer.weight.dtype, layer.weight.device,
               tuple(sorted(chosen[name].items())))
        groups.setdefault(key, []).append((name, layer, chosen[name]))
    return list(groups.values())


def _fit_stack(cls: type[StructuredLinear], group: list[tuple[str, nn.Linear, dict[str, Any]]],
               grams: Mapping[str, torch.Tensor] | None, layer_progress: ProgressFn | None,
               options: Mapping[str, Any]) -> dict[str, StructuredLinear]:
    """Project one stack of same-shape weights at once (``from_dense_batch``: each member as it
    would be alone, to rounding, for one iteration's overhead); layer name -> its module."""
    layers = [layer for _, layer, _ in group]
    work = _work_dtype(layers[0].weight.dtype)
    weights = torch.stack([layer.weight.detach().to(work) for layer in layers])
    biases = None if layers[0].bias is None else torch.stack([layer.bias.detach().to(work) for layer in layers])
    gram = None if grams is None else torch.stack([grams[name].to(layers[0].weight.device) for name, _, _ in group])
    modules = cls.from_dense_batch(weights, biases, gram=gram, progress=layer_progress, **group[0][2], **options)
    return {name: module for (name, _, _), module in zip(group, modules)}


def swap_linears(
    model: nn.Module,
    family: str,
    rho: float,
    *,
    include: str | LayerFilter | None = None,
    hparams: Mapping[str, Mapping[str, Any]] | None = None,
    project: bool = True,
    measure_error: bool = True,
    grams: Mapping[str, torch.Tensor] | None = None,
    calibrated: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    layer_progress: ProgressFn | None = None,
    **projection_options: Any,
) -> list[SwapRecord]:
    """Replace every ``nn.Linear`` whose qualified name matches ``include`` (a regex or a
    predicate) by ``family`` at ``rho``, in place: each layer by the family's own choice at
    ``rho``, or with ``hparams`` (by layer name, every matched layer; ``allocate_linears``)
    by those, so that ``rho`` holds over the layers together.

    With ``project`` the pretrained weights are projected onto the family, every stack of
    same-shape layers with the same hyperparameters in one batched fit (``from_dense_batch``);
    without it the new layer keeps its own from-scratch initialisation. ``grams`` maps layer
    names to their inputs' second moments (``structbench.models.calibration``): every record
    then carries the activation-weighted error, and with ``calibrated`` the projection
    minimises it (``from_dense(..., gram=)``). ``progress`` is called as
    ``progress(layer_name, k, K)`` before each stack (its first layer, and the layers done).
    """
    cls = get_family(family)
    targets = list(linear_targets(model, include).items())
    if not targets:
        raise StructbenchError(f"swap_linears: no nn.Linear layer matches {include!r}")
    unplanned = [name for name, _ in targets if hparams is not None and name not in hparams]
    if unplanned:
        raise StructbenchError(f"swap_linears: no hparams for {unplanned[:3]}{'...' if len(unplanned) > 3 else ''}")
    if (grams is not None or calibrated) and (grams is None or any(name not in grams for name, _ in targets)):
        missing = [name for name, _ in targets if grams is None or name not in grams]
        raise StructbenchError(f"swap_linears: no calibration Gram for {missing[:3]}{'...' if len(missing) > 3 else ''}")
    chosen = {name: dict(hparams[name]) if hparams is not None else
              cls.hparams_for(layer.out_features, layer.in_features, rho).hparams for name, layer in targets}
    fits: dict[str, StructuredLinear] = {}
    if project:
        for group in _same_problems(targets, chosen):
            if progress is not None:
                progress(group[0][0], len(fits), len(targets))
            fits.update(_fit_stack(cls, group, grams if calibrated else None, layer_progress, projection_options))
    records: list[SwapRecord] = []
    for name, layer in targets:
        weight = layer.weight.detach()
        work = _work_dtype(weight.dtype)
        new = fits[name] if project else cls(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                             **chosen[name])
        new = new.to(device=weight.device, dtype=weight.dtype)
        err = werr = None
        if measure_error and project:
            with torch.no_grad():
                dense = new.to_dense().to(work)
                err = relative_error(weight.to(work), dense)
                if grams is not None:
                    werr = weighted_error(weight, dense, grams[name].to(weight.device))
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        records.append(SwapRecord(name, (layer.out_features, layer.in_features), new.hparams, new.rho_actual, err, werr))
    return records
