"""Name -> class registries with did-you-mean errors, in the spirit of timm's ``register_model``.

Families register themselves by decorating their class (``register_family``); this module
is all a family module imports, and it imports no family: ``structbench.families`` loads them
and is what everything else asks. A registry may be given a ``loader`` that imports its
entries' modules the first time it is read (the suites').
"""
from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Generic, TypeVar

from structbench.errors import StructbenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Files objects under unique names."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
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

    def add(self, name: str, obj: T) -> None:
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
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {', '.join(known)}"


FAMILIES: Registry[type] = Registry("family")
"""Filled by the ``@register_family`` classes of ``matrices/``, imported by ``structbench.families``."""


def register_family(name: str) -> Callable[[type], type]:
    """Class decorator: file a ``StructuredLinear`` subclass under ``name`` and tell it its name."""

    def deco(cls: type) -> type:
        cls.family = name
        FAMILIES.add(name, cls)
        return cls

    return deco
