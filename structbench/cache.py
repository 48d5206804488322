"""The cache every suite shares (converted weights, calibration Grams, projected factors, task
files), outside the repository, and the one way files are written into it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def cache_root() -> Path:
    """``$STRUCTBENCH_CACHE`` or ``~/.cache/structbench``."""
    env = os.environ.get("STRUCTBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "structbench"


def torch_save_atomic(path: Path, obj: Any) -> None:
    """``torch.save`` to a temporary sibling (named per process, so concurrent writers never
    share one), then renamed: an interrupted save never looks like a finished file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
