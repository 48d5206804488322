from __future__ import annotations

import pytest
import torch

from structbench.errors import StructbenchError
from structbench.registry import FAMILIES, Registry, build, hparams_for, list_families


def test_unknown_family_lists_known_and_suggests() -> None:
    with pytest.raises(StructbenchError) as info:
        FAMILIES.get("lowrnk")
    message = str(info.value)
    assert "did you mean 'lowrank'" in message
    assert "\n" not in message
    for name in list_families():
        assert name in message


def test_build_and_hparams_for_by_name() -> None:
    fit = hparams_for("lowrank", 32, 48, 0.5)
    layer = build("lowrank", 48, 32, bias=False, **fit.hparams)
    assert layer(torch.randn(4, 48)).shape == (4, 32)
    assert layer.bias is None and layer.family == "lowrank"


def test_pattern_listing() -> None:
    assert list_families("low*") == ["lowrank"]


def test_lazy_entries_and_duplicates() -> None:
    reg: Registry[object] = Registry("thing")
    reg.add("path", "os.path:join")
    import os.path

    assert reg.get("path") is os.path.join
    with pytest.raises(StructbenchError, match="registered twice"):
        reg.add("path", "os:sep")
