"""Compute-matched training (suite train-scaling): per-factor learning rates against hand-worked
values, zero-initialised outputs for every family, fixed-rank structures, the ladder's MAC
counts, the report's arithmetic, config errors, and a tiny sweep end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import structbench.models.wikitext as wikitext
from structbench.cli import main
from structbench.config import deep_merge, load_config, resolve
from structbench.errors import NotApplicable, StructbenchError
from structbench.families import build, get_family, list_families
from structbench.results import load_run
from structbench.stats import t_interval
from structbench.train import data
from structbench.train.loop import Recipe, optimizer_for
from structbench.train.mlp import HIDDEN_LINEARS, MLP, MLPConfig
from structbench.train.scaling import dense_fan_ins, lr_multipliers, zero_outputs_
from structbench.train.structure import model_macs, structure_
from suites import SUITES
from suites.train_scaling import report
from tests.test_train import make_fashion_mnist

SUITE = SUITES.get("train-scaling")


class One(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer


def _layer(family: str) -> nn.Module:
    return build(family, 64, 64, **get_family(family).hparams_for(64, 64, 0.5).hparams)


def _multipliers(family: str, base: int, **hparams: int) -> dict[str, float]:
    layer = get_family(family)(64, 64, **hparams)
    found = lr_multipliers(One(layer), {"layer": base})
    return {name: found[p] for name, p in layer.named_parameters() if p in found}


def test_per_factor_learning_rates_match_hand_worked_values() -> None:
    # BTT 64x64, n1 = m2 = 8, rank 2: core 1 sums n2 = 8 inputs, core 2 sums n1 r = 16 of core 1's outputs
    assert _multipliers("btt", 32, in_blocks=8, out_blocks=8, rank=2) == {"C1": 32 / 8, "C2": 32 / 16}
    # Kronecker 64x64 of 8x8 factors, rank 2: B sums n2 = 8 inputs, A sums n1 r = 16 of B's outputs
    assert _multipliers("kronecker", 32, out_factor=8, in_factor=8, rank=2) == {"A": 32 / 16, "B": 32 / 8}
    # dense at width 64 against a base width of 16: muP's d0 / d
    assert _multipliers("dense", 16) == {"weight": 0.25}
    with pytest.raises(TypeError, match="not a structured layer"):
        lr_multipliers(One(nn.Linear(4, 4)), {"layer": 4})


@pytest.mark.parametrize("family", list_families())
def test_every_weight_factor_records_its_fan_in(family: str) -> None:
    layer = _layer(family)
    for name, param in layer.named_parameters():
        if param.dim() >= 2:
            assert getattr(param, "fan_in", 0) > 0, f"{family}.{name} records no fan-in"


@pytest.mark.parametrize("family", list_families())
def test_zeroed_outputs_give_a_zero_layer_that_still_learns(family: str) -> None:
    model = One(_layer(family))
    assert zero_outputs_(model, r"^layer$") == ["layer"]
    layer = model.layer
    x = torch.randn(8, 64)
    assert torch.count_nonzero(layer.to_dense()) == 0 and torch.count_nonzero(layer(x)) == 0
    (layer(x) * torch.randn(8, 64)).sum().backward()
    for factor in layer.output_factors:  # the zeroed factors get a gradient: training leaves zero
        assert torch.count_nonzero(getattr(layer, factor).grad) > 0, f"{family}.{factor}"


def test_fixed_rank_structures_are_balanced() -> None:
    assert get_family("btt").hparams_at_rank(256, 64, 2) == {"in_blocks": 8, "out_blocks": 16, "rank": 2}
    assert get_family("kronecker").hparams_at_rank(48, 64, 1) == {"out_factor": 6, "in_factor": 8, "rank": 1}
    with pytest.raises(NotApplicable, match="rank 9 exceeds"):
        get_family("btt").hparams_at_rank(64, 64, 9)
    with pytest.raises(NotApplicable, match="no fixed-rank structure"):
        get_family("lowrank").hparams_at_rank(64, 64, 1)
    assert [f for f in list_families() if get_family(f).has_fixed_rank()] == ["btt", "kronecker"]


@pytest.mark.parametrize("width", [16, 64, 256])
def test_ladder_macs_grow_as_specified(width: int) -> None:
    """Dense: 784 d + depth d^2 + 10 d per image; BTT rank 1 on d = s^2: each hidden layer 2 d^1.5."""
    depth, image = 3, torch.zeros(1, 28, 28)
    assert model_macs(MLP(MLPConfig(dim=width, depth=depth)), image) == 784 * width + depth * width ** 2 + 10 * width
    model = MLP(MLPConfig(dim=width, depth=depth))
    structure_(model, "btt", 1.0, HIDDEN_LINEARS, rank=1)
    assert model_macs(model, image) == 784 * width + depth * 2 * round(width ** 1.5) + 10 * width


def test_optimizer_groups_carry_their_scale() -> None:
    model = One(get_family("btt")(64, 64, in_blocks=8, out_blocks=8, rank=2))
    recipe = Recipe(steps=10, batch_size=1, lr=1e-3, weight_decay=0.1, warmup=0.0, min_lr=0.1, grad_clip=1.0,
                    betas=(0.9, 0.99), evals=1)
    opt = optimizer_for(model, recipe, lr_multipliers(model, dense_fan_ins(One(nn.Linear(32, 32)), r"^layer$")))
    scales = {id(p): (g["lr_scale"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    layer = model.layer
    assert scales[id(layer.C1)] == (4.0, 0.1) and scales[id(layer.C2)] == (2.0, 0.1)
    assert scales[id(layer.bias)] == (1.0, 0.0)


def test_t_interval_over_seeds() -> None:
    interval = t_interval([1.0, 2.0, 3.0])
    assert interval.estimate == 2.0 and interval.high - 2.0 == pytest.approx(4.302653 * 1 / math.sqrt(3), rel=1e-6)
    assert math.isnan(t_interval([1.0]).low)


def test_report_interpolates_dense_in_log_compute() -> None:
    """A curve 0.1 below dense at every seed, at compute between dense's widths, beats dense
    by exactly 0.1; a point beyond dense's range is not compared."""
    rows = []
    for seed, noise in enumerate([0.0, 0.01, -0.01]):
        for width, macs in ((16, 1e6), (32, 4e6)):  # dense: loss 2 at 1e6, 1 at 4e6
            rows.append({"task": "mlp", "scaling": "standard", "family": "dense", "rho": 1.0, "rank": math.nan,
                         "width": width, "lr_factor": 1.0, "seed": seed, "train_macs": macs,
                         "eval_loss": (2.0 if width == 16 else 1.0) + noise, "rho_actual": 1.0, "macs_ratio": 1.0})
        for width, macs in ((16, 2e6), (32, 8e6)):  # halfway in log-compute: dense 1.5 there
            rows.append({"task": "mlp", "scaling": "standard", "family": "lowrank", "rho": 0.25, "rank": math.nan,
                         "width": width, "lr_factor": 1.0, "seed": seed, "train_macs": macs,
                         "eval_loss": 1.4 + noise, "rho_actual": 0.25, "macs_ratio": 0.25})
    ok = pd.DataFrame(rows)
    ok["curve"] = ok.apply(report.curve_label, axis=1)
    table = report.versus_dense(ok, report.best(report.sweep(ok)))
    (row,) = table.to_dict("records")
    assert row["curve"] == "lowrank rho=0.25" and row["compared"] == 1
    assert row["loss - dense"] == pytest.approx(-0.1) and row["verdict"] == report.BEATS
    assert row["dense exponent"] == pytest.approx(-0.5)  # loss halves when compute quadruples


@pytest.mark.parametrize("change, message", [
    ({"mlp": {"model": {"dim": 8}}}, r"model.dim is set by train-scaling.mlp.widths"),
    ({"mlp": {"widths": [64, 32]}}, "widths must ascend"),
    ({"ranks": {"lowrank": [1]}}, "'lowrank' has no fixed-rank structure; accepted: btt, kronecker"),
    ({"tasks": ["cnn"]}, "tasks must be a non-empty list from"),
    ({"scalings": ["muP"]}, "scalings must be a non-empty list from"),
    ({"gpt": {"model": {"heads": 5}}}, "gpt at width 32.model: dim 32 is not a multiple of heads 5"),
])
def test_bad_config_is_one_clear_line(change: dict, message: str, tmp_path: Path) -> None:
    make_fashion_mnist(tmp_path)
    config = deep_merge(load_config(SUITE.config_path), {"mlp": {"data": {"root": str(tmp_path)}}})
    with pytest.raises(StructbenchError, match=message):
        resolve("train-scaling", deep_merge(config, change), SUITE.validate, quick=False)


@pytest.mark.timeout(300)
def test_tiny_sweep_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_fashion_mnist(tmp_path / "fmnist")
    text = {"train": "the quick brown fox jumps over the lazy dog. " * 400, "valid": "a lazy dog naps. " * 300}
    monkeypatch.setattr(wikitext, "wiki_text", lambda split: text[split])
    data.wiki_bytes.cache_clear()
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({
        "include": str(SUITE.config_path), "families": ["lowrank"], "ranks": {"btt": [1]},
        "mlp": {"data": {"root": str(tmp_path / "fmnist")}}}))
    out = tmp_path / "results"
    try:
        assert main(["--suite", "train-scaling", "--quick", "--config", str(config), "--set", "lr_factors=[1, 2]",
                     "--out", str(out), "--threads", "1"]) == 0
    finally:
        data.wiki_bytes.cache_clear()
    (run_dir,) = (out / "train-scaling").iterdir()
    run = load_run(run_dir)
    # 2 tasks x 2 widths x 2 scalings x 2 lr factors x (dense, lowrank, btt rank 1, kronecker rank 1)
    assert len(run.rows) == 64 and all(r["status"] == "ok" for r in run.rows)
    for row in run.rows:
        assert row["train_macs"] == 3 * row["macs"] * row["steps"] * (64 if row["task"] == "mlp" else 8)
        assert row["eval_loss"] == row["test_loss" if row["task"] == "mlp" else "val_loss"]
    dense = {(r["task"], r["width"], r["scaling"], r["lr_factor"], r["seed"]): r["eval_loss"]
             for r in run.rows if r["family"] == "dense"}
    # the MLP's base-width dense model trains the same either way (multipliers of 1, no residual)
    assert dense[("mlp", 16, "standard", 1.0, 0)] == dense[("mlp", 16, "structure-aware", 1.0, 0)]
    assert dense[("mlp", 32, "standard", 1.0, 0)] != dense[("mlp", 32, "structure-aware", 1.0, 0)]
    page = (run_dir / "report.html").read_text()
    assert "Which families beat dense per unit of compute" in page and "btt rank=1" in page
    assert main(["--suite", "train-scaling", "--resume", str(run_dir), "--out", str(out)]) == 0
    assert len(load_run(run_dir).rows) == 64
