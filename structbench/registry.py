"""Name -> class registries with did-you-mean errors, in the spirit of timm's ``register_model``.

Families register themselves by decorating their class; suites register lazily as
``"module:attr"`` strings so that listing them never imports heavy optional packages.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
from typing import Any, Callable, Generic, TypeVar

from structbench.errors import StructbenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Files objects under unique names; entries may be lazy ``"module:attr"`` strings."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}
        self._loader = loader
        self._loaded = loader is None

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            assert self._loader is not None
            self._loader()

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T | str) -> None:
        if name in self._entries and self._entries[name] is not obj:
            raise StructbenchError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj

    def names(self, pattern: str | None = None) -> list[str]:
        self._ensure_loaded()
        names = sorted(self._entries)
        return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def get(self, name: str) -> T:
        self._ensure_loaded()
        if name not in self._entries:
            raise StructbenchError(self.unknown_message(name))
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def unknown_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {', '.join(known)}"


def _load_families() -> None:
    importlib.import_module("matrices")


FAMILIES: Registry[type] = Registry("family", loader=_load_families)


def register_family(name: str) -> Callable[[type], type]:
    """Class decorator: file a ``StructuredLinear`` subclass under ``name`` and tell it its name."""

    def deco(cls: type) -> type:
        cls.family = name
        FAMILIES.add(name, cls)
        return cls

    return deco


def get_family(name: str) -> type:
    return FAMILIES.get(name)


def list_families(pattern: str | None = None) -> list[str]:
    return FAMILIES.names(pattern)


def build(name: str, in_features: int, out_features: int, *, bias: bool = True, device: Any = None,
          dtype: Any = None, **hparams: Any):
    """Construct family ``name`` as a drop-in for ``nn.Linear(in_features, out_features, bias,
    device=, dtype=)``."""
    return get_family(name)(in_features, out_features, bias=bias, **hparams).to(device=device, dtype=dtype)


def hparams_for(name: str, out_features: int, in_features: int, rho: float):
    """Hyperparameters of family ``name`` keeping at most ``rho`` of an ``m x n`` dense weight."""
    return get_family(name).hparams_for(out_features, in_features, rho)
