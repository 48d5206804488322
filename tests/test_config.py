"""Config handled once: the ``quick:`` overlay's one meaning, ``!replace``, ``--families``, and
both configs validated."""
from __future__ import annotations

from pathlib import Path

import pytest

from structbench.config import deep_merge, load_config, resolve
from structbench.errors import StructbenchError
from suites import SUITES


def test_quick_overlay_merges_mappings_and_replace_replaces_them(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a: {x: 1, y: 2}\nb: {x: 1, y: 2}\nquick:\n  a: {y: 3}\n  b: !replace {y: 3}\n")
    raw = load_config(path)
    merged = deep_merge({k: v for k, v in raw.items() if k != "quick"}, raw["quick"])
    assert merged == {"a": {"x": 1, "y": 3}, "b": {"y": 3}}


def test_kernels_quick_shapes_are_a_smaller_set_not_extra_shapes() -> None:
    kernels = SUITES.get("kernels")
    raw = load_config(kernels.config_path)
    quick = resolve("kernels", raw, kernels.validate, quick=True)
    assert set(quick["shapes"]) == set(raw["quick"]["shapes"]) < set(raw["shapes"])
    assert resolve("kernels", raw, kernels.validate, quick=False)["shapes"] == raw["shapes"]


def test_families_option_applies_to_the_quick_config_too() -> None:
    train = SUITES.get("train-lm")
    raw = {**load_config(train.config_path), "quick": {**load_config(train.config_path)["quick"], "families": ["monarch"]}}
    assert resolve("train-lm", raw, train.validate, quick=True, families=["lowrank"])["families"] == ["lowrank"]
    assert resolve("train-lm", raw, train.validate, quick=True)["families"] == ["monarch"]


def test_a_typo_in_the_config_not_run_still_stops_the_run() -> None:
    kernels = SUITES.get("kernels")
    raw = {**load_config(kernels.config_path), "quick": {"rhos": [2.0]}}
    with pytest.raises(StructbenchError, match="rhos must be"):
        resolve("kernels", raw, kernels.validate, quick=False)


def test_a_set_value_wins_over_the_quick_overlay_and_quick_keys_edit_it() -> None:
    """``--quick --set shapes=...`` runs the shapes set, not quick's; ``--set quick.rhos=...``
    edits the overlay; the full config sees the plain sets only."""
    kernels = SUITES.get("kernels")
    raw = load_config(kernels.config_path)
    sets = ["shapes={tiny: [8, 8]}", "quick.rhos=[0.25]"]
    quick = resolve("kernels", raw, kernels.validate, quick=True, sets=sets)
    assert quick["shapes"] == {"tiny": [8, 8]} and quick["rhos"] == [0.25]
    full = resolve("kernels", raw, kernels.validate, quick=False, sets=sets)
    assert full["shapes"] == {"tiny": [8, 8]} and full["rhos"] == raw["rhos"]
