from __future__ import annotations

import pytest
import torch

from structbench.errors import StructbenchError
from structbench.families import build, hparams_for, list_families
from structbench.registry import FAMILIES, Registry


def test_unknown_family_lists_known_and_suggests() -> None:
    with pytest.raises(StructbenchError) as info:
        FAMILIES.get("lowrnk")
    message = str(info.value)
    assert "did you mean 'lowrank'" in message
    assert "\n" not in message
    for name in list_families():
        assert name in message


def test_build_and_hparams_for_by_name() -> None:
    fit = hparams_for("lowrank", 0.5, out_features=32, in_features=48)
    layer = build("lowrank", 48, 32, bias=False, **fit.hparams)
    assert layer(torch.randn(4, 48)).shape == (4, 32)
    assert layer.bias is None and layer.family == "lowrank"


def test_pattern_listing() -> None:
    assert list_families("low*") == ["lowrank"]


def test_duplicates_are_refused() -> None:
    reg: Registry[object] = Registry("thing")
    import os.path

    reg.add("path", os.path.join)
    reg.add("path", os.path.join)  # the same object again (a module imported twice) is no conflict
    assert reg.get("path") is os.path.join
    with pytest.raises(StructbenchError, match="registered twice"):
        reg.add("path", os.sep)
