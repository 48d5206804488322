"""The model-level budget: every family's ladder of structures, the allocator meeting rho over
all matrices within a point (random shapes, SmolLM2-135M's and Gemma3-270M's), a refusal only
where no mix of the family's structures can meet it, and the swap / suite wiring."""
from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch import nn

from structbench.allocate import TOLERANCE, Shape, allocate
from structbench.errors import NotApplicable, StructbenchError
from structbench.families import get_family, list_families
from structbench.swap import Budget, allocate_linears, budget, swap_linears

FAMILIES = list_families()
COMPRESSIBLE = [f for f in FAMILIES if get_family(f).compressible]
TARGETS = (0.9, 0.8, 0.5)  # CR 10 / 20 / 50 %


def decoder(layers: int, hidden: int, attention: int, kv: int, mlp: int) -> dict[str, Shape]:
    """The seven projections of each layer of a Llama-style decoder, by name, in model order."""
    per_layer = {"q": (attention, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, attention),
                 "gate": (mlp, hidden), "up": (mlp, hidden), "down": (hidden, mlp)}
    return {f"layers.{i}.{name}": shape for i in range(layers) for name, shape in per_layer.items()}


SMOLLM2 = decoder(30, hidden=576, attention=576, kv=192, mlp=1536)  # SmolLM2-135M: 9 heads, 3 KV heads of 64
GEMMA3 = decoder(18, hidden=640, attention=1024, kv=256, mlp=2048)  # Gemma3-270M: 4 heads, 1 KV head of 256


def counts(family: str, shape: Shape) -> list[int]:
    cls = get_family(family)
    return [cls.effective_params(*shape, **fit.hparams) for fit in cls.hparam_options(*shape)]


def reachable_range(family: str, shapes: dict[str, Shape]) -> tuple[float, float]:
    """The kept fraction with every matrix at its smallest and at its largest structure."""
    dense = sum(m * n for m, n in shapes.values())
    ladders = [counts(family, shape) for shape in shapes.values()]
    return sum(c[0] for c in ladders) / dense, sum(c[-1] for c in ladders) / dense


def check(family: str, shapes: dict[str, Shape], rho: float) -> None:
    """The allocation keeps rho within a point, with the family's own structures; or the
    refusal is true: rho lies outside what the family's structures can keep at all."""
    try:
        allocation = allocate(family, shapes, rho)
    except NotApplicable as err:
        low, high = reachable_range(family, shapes)
        assert high < rho - TOLERANCE or low > rho + TOLERANCE, (family, rho, low, high, str(err))
        assert "cannot keep" in str(err) and f"{rho:.1%}" in str(err)
        return
    assert abs(allocation.rho_actual - rho) <= TOLERANCE + 1e-12, (family, rho, allocation.rho_actual)
    assert set(allocation.fits) == set(shapes)
    cls = get_family(family)
    kept = sum(cls.effective_params(*shapes[name], **fit.hparams) for name, fit in allocation.fits.items())
    assert kept == allocation.params and allocation.dense_params == sum(m * n for m, n in shapes.values())
    for name, fit in allocation.fits.items():  # the family's own choice at rho, or on the shape's ladder
        shape = shapes[name]
        if allocation.uniform:
            assert fit == cls.hparams_for(*shape, rho), (name, fit)
        else:
            assert fit in cls.hparam_options(*shape), (name, fit)


# ---- each family's ladder ----------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 48), (576, 192)])
def test_every_family_lists_its_structures_from_fewest_to_most_kept(family: str, shape: Shape) -> None:
    cls = get_family(family)
    m, n = shape
    options = cls.hparam_options(m, n)
    kept = counts(family, shape)
    assert kept == sorted(set(kept)) and 0 < kept[0] and kept[-1] <= m * n  # distinct, never above dense
    assert options[-1] == cls.hparams_for(m, n, 1.0)  # the top is the family's own choice at rho = 1
    for fit, params in list(zip(options, kept))[:: max(1, len(options) // 3)]:
        layer = cls(n, m, **fit.hparams)
        assert layer.kept_params() == params and layer.rho_actual == pytest.approx(fit.rho_actual)
    assert cls.compressible or len(options) == 1


def test_a_shape_with_no_structure_has_an_empty_ladder() -> None:
    assert get_family("monarch").hparam_options(7, 7) == ()
    with pytest.raises(NotApplicable, match="no structure for a 7x7"):
        allocate("monarch", {"a": (64, 64), "b": (7, 7)}, 0.5)


# ---- the allocator -----------------------------------------------------------------
@pytest.mark.parametrize("family", COMPRESSIBLE)
def test_allocation_meets_the_budget_on_random_decoders(family: str) -> None:
    rng = random.Random(f"decoder-{family}")
    for _ in range(3):
        hidden = rng.choice([64, 96, 128, 192, 256])
        shapes = decoder(rng.randint(3, 8), hidden, attention=hidden, kv=hidden // rng.choice([1, 2, 4]),
                         mlp=rng.choice([2, 3, 4]) * hidden)
        for rho in (*TARGETS, 0.3):
            check(family, shapes, rho)


@pytest.mark.parametrize("family", COMPRESSIBLE)
def test_allocation_meets_the_budget_on_random_shapes(family: str) -> None:
    rng = random.Random(f"shapes-{family}")
    for _ in range(3):
        shapes = {f"m{i}": (16 * rng.randint(1, 16), 16 * rng.randint(1, 16)) for i in range(rng.randint(20, 40))}
        for rho in (*TARGETS, 0.3):
            check(family, shapes, rho)


@pytest.mark.parametrize("family", ["monarch", "blockdiag"])
def test_a_refusal_means_no_mix_of_the_familys_structures_meets_the_budget(family: str) -> None:
    """Few matrices with coarse steps, checked against every mix there is."""
    rng = random.Random(family)
    pool = [(64, 64), (32, 64), (128, 64), (64, 128), (96, 96), (48, 96)]
    for _ in range(40):
        shapes = {f"m{i}": rng.choice(pool) for i in range(rng.randint(1, 4))}
        rho = rng.choice([0.9, 0.8, 0.6, 0.5, 0.3])
        dense = sum(m * n for m, n in shapes.values())
        totals = {sum(mix) for mix in itertools.product(*(counts(family, s) for s in shapes.values()))}
        possible = any(abs(t - rho * dense) <= TOLERANCE * dense for t in totals)
        try:
            allocation = allocate(family, shapes, rho)
        except NotApplicable:
            assert not possible, (shapes, rho)
        else:
            assert possible and abs(allocation.rho_actual - rho) <= TOLERANCE + 1e-12, (shapes, rho)


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
@pytest.mark.parametrize("family", COMPRESSIBLE)
def test_every_family_meets_cr_10_20_50_on_the_real_models_shapes(model: str, family: str) -> None:
    """Only Monarch refuses, at CR 10 and 20 %: with a block count that must divide the shape and
    whose square must divide its short side, its largest structure keeps about 2/3 of every
    non-square matrix here (more would take a single block, which keeps more than dense)."""
    shapes = SMOLLM2 if model == "smollm2" else GEMMA3
    for rho in TARGETS:
        if family == "monarch" and rho > 0.5:
            with pytest.raises(NotApplicable, match=r"cannot keep .* at most (74\.5|69\.6)%"):
                allocate(family, shapes, rho)
            continue
        allocation = allocate(family, shapes, rho)
        assert abs(allocation.rho_actual - rho) <= TOLERANCE + 1e-12, (family, rho, allocation.rho_actual)
        per_matrix = {shape: get_family(family).hparams_for(*shape, rho) for shape in set(shapes.values())}
        uniform = sum(per_matrix[s].rho_actual * s[0] * s[1] for s in shapes.values()) / allocation.dense_params
        # the family's own per-matrix choice is kept wherever it already lands within a point
        assert allocation.uniform == (abs(uniform - rho) <= TOLERANCE), (family, rho, uniform)


def test_block_families_that_landed_on_one_model_now_sit_at_each_target() -> None:
    """Per matrix, block-diagonal kept 1/2 at CR 10, 20 and 50 % and Monarch 0.458 at CR 50 %."""
    achieved = {(f, rho): allocate(f, SMOLLM2, rho).rho_actual for f in ("blockdiag", "monarch") for rho in TARGETS
                if (f, rho) not in {("monarch", 0.9), ("monarch", 0.8)}}
    for (family, rho), kept in achieved.items():
        assert kept == pytest.approx(rho, abs=TOLERANCE), (family, rho)
    assert len({round(kept, 3) for (family, _), kept in achieved.items() if family == "blockdiag"}) == 3


def test_the_mix_stays_near_rho_and_is_deterministic() -> None:
    """Every matrix of the mix keeps one of the two structures around rho on its own ladder
    (Monarch at CR 50 % on SmolLM2: blocks 2, 3 or 4, never 1 or 6), and the same input gives
    the same allocation."""
    allocation = allocate("monarch", SMOLLM2, 0.5)
    for name, fit in allocation.fits.items():
        ladder = [f.rho_actual for f in get_family("monarch").hparam_options(*SMOLLM2[name])]
        below = max((r for r in ladder if r <= 0.5), default=ladder[0])
        above = min((r for r in ladder if r > 0.5), default=ladder[-1])
        assert fit.rho_actual in (below, above), (name, fit)
    assert not allocation.uniform and allocate("monarch", SMOLLM2, 0.5) == allocation


def test_the_dense_baseline_allocates_only_everything() -> None:
    with pytest.raises(NotApplicable, match="dense cannot keep .* at least 100.0%"):
        allocate("dense", SMOLLM2, 0.9)
    assert allocate("dense", SMOLLM2, 1.0).rho_actual == 1.0


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(StructbenchError, match="rho must be a number"):
        allocate("lowrank", SMOLLM2, 0.0)
    with pytest.raises(StructbenchError, match="no matrices"):
        allocate("lowrank", {}, 0.5)
    with pytest.raises(StructbenchError, match="unknown family"):
        allocate("monarc", SMOLLM2, 0.5)


# ---- wiring: swapping a model's linears and the row's figures -------------------------
class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 64)
        self.blocks = nn.ModuleList(nn.ModuleDict({"q": nn.Linear(64, 64), "up": nn.Linear(64, 128),
                                                   "down": nn.Linear(128, 64)}) for _ in range(4))


def test_swapping_with_an_allocation_meets_rho_over_the_model() -> None:
    torch.manual_seed(0)
    per_layer, planned = Toy(), Toy()
    planned.load_state_dict(per_layer.state_dict())
    swap_linears(per_layer, "blockdiag", 0.8, include=r"blocks\.")
    allocation = allocate_linears(planned, "blockdiag", 0.8, include=r"blocks\.")
    swap_linears(planned, "blockdiag", 0.8, include=r"blocks\.", hparams=allocation.hparams)
    targets = lambda model: [m for name, m in model.named_modules() if name.count(".") == 2]  # noqa: E731
    assert budget(targets(per_layer)).rho_actual == 0.5  # one block count per layer: 2 blocks everywhere
    assert budget(targets(planned)).rho_actual == pytest.approx(0.8, abs=TOLERANCE)
    assert {name: m.hparams for name, m in planned.named_modules() if name.count(".") == 2} == allocation.hparams
    with pytest.raises(StructbenchError, match="no hparams for"):
        swap_linears(Toy(), "blockdiag", 0.8, include=r"blocks\.", hparams={"blocks.0.q": {"blocks": 2}})


def test_cr_linear_and_cr_model_share_the_saved_parameters() -> None:
    saved = Budget(params=300, dense_params=1000, macs=300, dense_macs=1000)
    assert saved.cr_linear == pytest.approx(0.7) and saved.cr_model(2800) == pytest.approx(0.25)
    assert Budget(1000, 1000, 1000, 1000).cr_model(5000) == 0.0


def test_only_a_mixed_allocation_moves_the_projection_cache(tmp_path) -> None:
    """A uniform allocation is the per-layer choice the factors were always cached under."""
    from structbench.suite import RunContext
    from suites.llama_compress.suite import _cache_file

    cfg = {"model": "smollm2-135m-instruct", "layers": "all", "projections": ["q_proj"], "projection": {}}
    ctx = RunContext(device="cpu", dtype="float32", threads=1, seed=0, quick=True, run_dir=tmp_path,
                     cache_dir=tmp_path, config=cfg, log=lambda message: None)
    shapes = {f"model.layers.{i}.self_attn.q_proj": (576, 576) for i in range(30)}
    for family, rho in (("lowrank", 0.8), ("blockdiag", 0.8)):
        case = {"family": family, "rho": rho, "objective": "frobenius"}
        allocation = allocate(family, shapes, rho)
        moved = _cache_file(cfg, case, ctx, allocation=allocation) != _cache_file(cfg, case, ctx)
        assert moved == (not allocation.uniform) and moved == (family == "blockdiag")
