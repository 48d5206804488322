"""What a stored number was made from: the versions of the packages that compute it, the commit
every row was made at (and what changed in the result-producing code between commits when a run
spans several), and the SHA-256 of every input file a suite read.

A reference run is cited and resumed on other machines; these facts are what lets a reader tell
whether two rows may be compared, and a resumed run whether its inputs are still the same files.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "fvcore", "lm_eval", "numpy", "scipy", "pandas", "gguf", "safetensors",
            "triton", "ray", "plotly")
"""Distributions whose versions can change a stored figure (import names; ``lm_eval`` is
``lm-eval`` on the index)."""

RESULT_CODE = ("structbench", "matrices", "suites", "pyproject.toml")
"""Paths under which a change can change a row: when a run's rows span commits, the files changed
here between them are listed in the run (a change there means re-running the affected rows)."""


def versions() -> dict[str, str | None]:
    """Installed version of each of ``PACKAGES`` (None when absent)."""
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, computed once per process for the same path, size and mtime."""
    stat = Path(path).stat()
    return _digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def input_digests(inputs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """``{name: {"file", "bytes", "sha256"}}`` for every input file that exists; the file's name
    only, never its absolute path (which differs per machine and says nothing about content).
    One that does not exist (never fetched in this run) is recorded as missing."""
    out: dict[str, dict[str, Any]] = {}
    for name, path in sorted(inputs.items()):
        path = Path(path)
        if path.is_file():
            out[name] = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        else:
            out[name] = {"file": path.name, "missing": True}
    return out


def changed_code(old: str, new: str, root: Path) -> list[str] | None:
    """Files under ``RESULT_CODE`` that differ between commits ``old`` and ``new`` (None when git
    cannot tell: no repository, or a commit it does not have)."""
    try:
        out = subprocess.run(["git", "diff", "--name-only", old, new, "--", *RESULT_CODE], cwd=root,
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sorted(line for line in out.splitlines() if line)
