"""Shared fixtures: deterministic seeds and float64 by default for exactness checks."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
