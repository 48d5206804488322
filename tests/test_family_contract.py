"""The one-file family contract: a family defined here, and registered only while these tests
run, goes through the kernels, approx and train suites' quick configs (``families: all``) and
appears in their rows and reports, with no other file edited.

If any suite, report, config or helper kept its own list of families, the family below would
be missing from its cases, its report, or its colours, and a test here fails.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import nn

from structbench.cli import main
from structbench.errors import NotApplicable, StructbenchError
from structbench.initialization import unit_gain_
from structbench.families import family_order, get_family
from structbench.registry import FAMILIES, register_family
from structbench.report.plots import family_color
from structbench.results import load_run
from structbench.structured import StructuredLinear, check_positive_int
from structbench.synthetic import kinds, make_matrix

NAME = "colsubset"


class ColumnSubsetLinear(StructuredLinear):
    """``W`` keeps ``columns`` of its ``n`` input columns and is zero elsewhere: a layer that
    reads a fixed subset of its inputs (input pruning). Projection keeps the columns of largest
    norm, exact on the family's own members."""

    synthetic_kind = True
    plot_order = 1000  # after every shipped family

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, columns: int) -> None:
        super().__init__(in_features, out_features, bias)
        self.columns = check_positive_int("columns", columns, self.family)
        if columns > in_features:
            raise StructbenchError(f"{self.family}: columns {columns} exceeds in_features {in_features}")
        self.register_buffer("index", torch.linspace(0, in_features - 1, columns).round().long())
        self.W = nn.Parameter(torch.empty(out_features, columns))
        unit_gain_(self.W, fan_in=columns)

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return nn.functional.linear(x.index_select(1, self.index), self.W, bias)

    def to_dense(self) -> torch.Tensor:  # a stack's W has a leading dim: so does its dense matrix
        dense = self.W.new_zeros(*self.W.shape[:-2], self.out_features, self.in_features)
        return dense.index_copy(-1, self.index, self.W)

    @torch.no_grad()
    def scale_input_(self, d: torch.Tensor) -> None:
        self.W.mul_(d[..., self.index].unsqueeze(-2))

    @property
    def hparams(self) -> dict[str, Any]:
        return {"columns": self.columns}

    @classmethod
    def weight_params(cls, out_features: int, in_features: int, columns: int) -> int:
        return out_features * columns

    @classmethod
    def _hparams_for(cls, out_features: int, in_features: int, rho: float) -> dict[str, Any]:
        columns = int(rho * in_features)
        if columns < 1:
            raise NotApplicable(f"{cls.family}: rho={rho} keeps no column of {in_features}")
        return {"columns": columns}

    def _project(self, weight: torch.Tensor) -> None:
        # a stack of weights shares its buffers: one column choice, by the norm over the stack
        norms = weight.norm(dim=-2).reshape(-1, self.in_features).norm(dim=0)
        keep = norms.topk(self.columns).indices.sort().values
        self.index.copy_(keep)
        self.W.copy_(weight[..., keep])


@pytest.fixture()
def new_family(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``NAME`` registered for one test, and gone after it (``monkeypatch`` restores the registry)."""
    FAMILIES.names()  # load the shipped families first
    monkeypatch.setattr(ColumnSubsetLinear, "family", NAME)
    monkeypatch.setitem(FAMILIES._entries, NAME, ColumnSubsetLinear)
    yield NAME
    assert NAME not in FAMILIES._entries or FAMILIES.get(NAME) is ColumnSubsetLinear


def test_registration_is_one_decorator_and_the_family_is_correct(new_family: str) -> None:
    assert register_family  # what a family file uses; the fixture files the class the same way
    cls = get_family(new_family)
    assert family_order()[-1] == new_family and new_family in kinds()
    declared = {get_family(f).plot_color for f in family_order() if f != new_family}
    assert family_color(new_family) not in declared  # a colour of its own, derived
    w = make_matrix(new_family, 12, 20, seed=3, dtype=torch.float64)
    module = cls.from_dense(w, rho=0.2)
    assert float((module.to_dense().detach() - w).norm() / w.norm()) < 1e-12  # exact on its own kind
    x = torch.randn(5, 20, dtype=torch.float64)
    assert torch.allclose(module(x), x @ module.to_dense().T)


def _run(tmp_path: Path, suite: str, config: dict[str, Any], *extra: str) -> Path:
    path = tmp_path / f"{suite}.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "results"
    assert main(["--suite", suite, "--quick", "--config", str(path), "--out", str(out), "--threads", "1", *extra]) == 0
    (run_dir,) = (out / suite).iterdir()
    return run_dir


def _rows(run_dir: Path, family: str) -> list[dict[str, Any]]:
    run = load_run(run_dir)
    assert run.meta["status"] == "complete"
    assert all(r["status"] in ("ok", "skipped") for r in run.rows), [r["reason"] for r in run.rows if r["status"] == "error"]
    return [r for r in run.rows if r["family"] == family and r["status"] == "ok"]


def test_kernels_quick_times_the_new_family(new_family: str, tmp_path: Path) -> None:
    config = {"families": "all", "shapes": {"s": [64, 64]}, "rhos": [0.5], "tokens": [8], "min_run_time": 0.01,
              "rounds": 6, "quick": {}}
    run_dir = _run(tmp_path, "kernels", config)
    [row] = _rows(run_dir, new_family)
    assert row["rel_err"] < 1e-4 and row["macs_agree"] and row["macs"] == 8 * 64 * 32
    assert new_family in (run_dir / "report.html").read_text() and new_family in (run_dir / "table.md").read_text()


def test_approx_quick_projects_onto_and_draws_the_new_family(new_family: str, tmp_path: Path) -> None:
    config = {"families": "all", "rhos": [0.2], "projection": {"blast": {"steps": 5}, "gaudi": {"steps": 4, "polish": 2},
                                                              "pixelfly": {"rounds": 1}},
              "synthetic": {"kinds": "all", "sizes": [[32, 64]], "seeds": [0]}, "real": {}, "quick": {}}
    run_dir = _run(tmp_path, "approx", config)
    rows = _rows(run_dir, new_family)
    drawn = {r["matrix"] for r in load_run(run_dir).rows if r["status"] == "ok"}  # kinds this shape can hold
    assert new_family in drawn and {r["matrix"] for r in rows} == drawn  # every kind, its own included
    own = next(r for r in rows if r["matrix"] == new_family)
    assert own["rel_error"] < 1e-5
    tried = [r for r in load_run(run_dir).rows if r["matrix"] == new_family]  # ok, or skipped with a reason
    assert {r["family"] for r in tried} == {f for f in family_order() if get_family(f).compressible}
    page = (run_dir / "report.html").read_text()
    assert page.count(new_family) > 5  # in the heat maps, curves and tables


def test_train_quick_trains_the_new_family(new_family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from structbench.models import wikitext
    from structbench.train import data

    text = {"train": "the quick brown fox jumps over the lazy dog. " * 400, "valid": "a lazy dog naps. " * 300}
    monkeypatch.setattr(wikitext, "wiki_text", lambda split: text[split])
    data.wiki_bytes.cache_clear()
    try:
        run_dir = _run(tmp_path, "train-lm", {"include": str(Path(__file__).parents[1] / "suites" / "train_lm" / "default.yaml")})
    finally:
        data.wiki_bytes.cache_clear()
    [row] = _rows(run_dir, new_family)
    assert math.isfinite(row["val_ppl"]) and row["model_macs_ratio"] < 1
    assert new_family in (run_dir / "report.html").read_text()
