"""Contract tests generated from the registry: registering a family is enough to test it."""
from __future__ import annotations

import pytest
import torch

from structbench.errors import NotApplicable, StructbenchError
from structbench.linalg import relative_error
from structbench.measure.flops import fvcore_macs
from structbench.families import get_family, list_families

FAMILIES = list_families()
COMPRESSIBLE = [f for f in FAMILIES if get_family(f).compressible]
SHAPES = [(64, 64), (64, 128), (128, 64)]  # (out_features, in_features)
RHOS = [0.5, 0.25]
# Real layer shapes the suites use: every family must choose hyperparameters for them.
REAL_SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (4096, 4096), (11008, 4096), (4096, 11008)]


def make(family: str, out_f: int, in_f: int, rho: float, bias: bool = True) -> torch.nn.Module:
    cls = get_family(family)
    hp = cls.hparams_for(out_f, in_f, rho).hparams
    return cls(in_f, out_f, bias=bias, **hp).double()


def test_all_seven_families_registered() -> None:
    assert set(FAMILIES) >= {"dense", "lowrank", "blockdiag", "monarch", "blast", "pixelfly", "gaudi"}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_dense(family: str, shape: tuple[int, int], rho: float, bias: bool) -> None:
    module = make(family, *shape, rho, bias).eval()
    if bias:
        torch.nn.init.normal_(module.bias)
    with torch.no_grad():
        dense = module.to_dense()
        for lead in [(1,), (7,), (32,), (2, 3)]:
            x = torch.randn(*lead, shape[1], dtype=torch.float64)
            expected = x @ dense.T + (module.bias if bias else 0)
            got = module(x)
            assert got.shape == (*lead, shape[0])
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("train", [False, True])
def test_forward_takes_strided_inputs_like_nn_linear(family: str, train: bool) -> None:
    """Inputs that are views, not fresh tensors: a column slice, a transpose, a permuted
    batch and a broadcast row, in both modes (autograd on in training)."""
    module = make(family, 64, 128, 0.5).train(train)
    f64 = {"dtype": torch.float64}
    inputs = [torch.randn(7, 256, **f64)[:, ::2], torch.randn(128, 7, **f64).T,
              torch.randn(3, 128, 5, **f64).permute(0, 2, 1), torch.randn(1, 128, **f64).expand(6, 128)]
    with torch.set_grad_enabled(train):
        for x in inputs:
            torch.testing.assert_close(module(x), x @ module.to_dense().T + module.bias, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_never_builds_dense(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = make(family, 64, 128, 0.5).eval()
    monkeypatch.setattr(type(module), "to_dense", lambda self: pytest.fail("forward called to_dense"))
    module(torch.randn(5, 128, dtype=torch.float64))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_num_params_counts_trainable(family: str, shape: tuple[int, int], bias: bool) -> None:
    module = make(family, *shape, 0.5, bias)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert module.num_params() == trainable


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tokens", [1, 16])
def test_macs_match_fvcore(family: str, shape: tuple[int, int], tokens: int) -> None:
    module = make(family, *shape, 0.5).float().eval()
    x = torch.randn(tokens, shape[1])
    assert fvcore_macs(module, x).total == module.macs(tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_parameter_budget_reports_both_its_parameters_and_its_macs(family: str) -> None:
    """``rho`` budgets parameters; ``macs_ratio`` says what that costs in compute, which for a
    Kronecker sum exceeds dense's (the training suites' 256x64 layers at rho 0.5)."""
    module = make(family, 256, 64, 0.5)
    assert module.rho_actual == module.kept_params() / (256 * 64) <= (0.5 if module.compressible else 1.0)
    assert module.macs_ratio == pytest.approx(module.macs(16) / (16 * 256 * 64))
    if family == "kronecker":
        assert module.macs_ratio > 1 > module.rho_actual
    else:  # at most what it keeps (Gaudi multiplies only the band entries its current widths use)
        assert module.macs_ratio <= module.rho_actual + 1e-12


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_every_parameter(family: str) -> None:
    module = make(family, 64, 128, 0.5).train()
    module(torch.randn(9, 128, dtype=torch.float64)).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{family}.{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{family}.{name} got a zero gradient"


@pytest.mark.parametrize("family", COMPRESSIBLE)
@pytest.mark.parametrize("shape", SHAPES + REAL_SHAPES)
@pytest.mark.parametrize("rho", [0.8, 0.5, 0.25, 0.1])
def test_hparams_for_stays_within_rho(family: str, shape: tuple[int, int], rho: float) -> None:
    cls = get_family(family)
    try:
        fit = cls.hparams_for(*shape, rho)
    except NotApplicable as err:
        # Block families cannot go arbitrarily low on small shapes (Monarch needs b^2 | min(m, n));
        # they must then say so clearly, and only for the lowest ratio of the grid.
        assert rho == 0.1 and "rho <= 0.1" in str(err), str(err)
        pytest.skip(f"infeasible for this family: {err}")
    assert 0 < fit.rho_actual <= rho + 1e-12
    if shape in REAL_SHAPES:  # small test shapes are too coarse-grained for a tight margin
        assert fit.rho_actual >= rho * (1 - cls.promises.rho_margin), f"{family} {shape}: rho {fit.rho_actual:.4f} for target {rho}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_projection_recovers_own_family(family: str, shape: tuple[int, int]) -> None:
    cls = get_family(family)
    target = make(family, *shape, 0.5).eval()
    weight = target.to_dense().detach()
    projected = cls.from_dense(weight, **target.hparams).eval()
    err = relative_error(weight, projected.to_dense().detach())
    assert err < cls.promises.projection_tolerance, f"{family} {shape}: relative error {err:.3g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_from_dense_with_rho_and_bias(family: str) -> None:
    weight, bias = torch.randn(64, 128, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    module = get_family(family).from_dense(weight, bias, rho=0.5)
    assert module.rho_actual <= 0.5 + 1e-12 or not module.compressible
    torch.testing.assert_close(module.bias.detach(), bias)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rho", [0, -0.1, 1.5, float("nan"), "half"])
def test_bad_rho_rejected(family: str, rho: object) -> None:
    with pytest.raises(StructbenchError, match="rho must be"):
        get_family(family).hparams_for(64, 64, rho)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", COMPRESSIBLE)
def test_from_dense_refuses_a_bad_bias_or_weight_dtype_in_one_line(family: str) -> None:
    cls, w = get_family(family), torch.randn(64, 128)
    for bias in (torch.randn(10), torch.randn(64, 1), torch.full((64,), float("nan")), torch.ones(64, dtype=torch.int64)):
        with pytest.raises(StructbenchError, match=r"bias of shape \(64,\)"):
            cls.from_dense(w, bias, rho=0.5)
    with pytest.raises(StructbenchError, match="floating-point weight"):
        cls.from_dense(torch.ones(64, 128, dtype=torch.int64), rho=0.5)


@pytest.mark.parametrize("family", COMPRESSIBLE)
def test_a_zero_weight_projects_to_zero_with_both_objectives(family: str) -> None:
    """A pruned or freshly zeroed layer: no 0/0 in a relative loss, no NaN factors; iterative
    fits from a random start (BLAST's PrecGD) come within 1e-6 of zero, closed forms exactly."""
    cls, x = get_family(family), torch.randn(300, 128, dtype=torch.float64)
    for gram in (None, x.T @ x / len(x)):
        module = cls.from_dense(torch.zeros(64, 128, dtype=torch.float64), rho=0.5, gram=gram)
        assert all(bool(torch.isfinite(p).all()) for p in module.parameters())
        assert float(module.to_dense().abs().max()) <= (1e-6 if family == "blast" else 0.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_shape_and_input_rejected(family: str) -> None:
    cls = get_family(family)
    with pytest.raises(StructbenchError, match="in_features"):
        cls.hparams_for(64, 0, 0.5)
    module = make(family, 64, 128, 0.5)
    with pytest.raises(StructbenchError, match="128"):
        module(torch.randn(3, 100, dtype=torch.float64))
    with pytest.raises(StructbenchError, match="2-D"):
        cls.from_dense(torch.randn(4, 64, 128))


@pytest.mark.parametrize("family", COMPRESSIBLE)
def test_bad_hparams_rejected(family: str) -> None:
    """Every integer hyperparameter rejects a negative value with a message naming it."""
    cls = get_family(family)
    hp = cls.hparams_for(64, 64, 0.5).hparams
    for name, value in hp.items():
        if isinstance(value, int):
            with pytest.raises(StructbenchError, match=name):
                cls(64, 64, **{**hp, name: -1})


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("train", [False, True])
def test_an_empty_batch_gives_an_empty_output_like_nn_linear(family: str, train: bool) -> None:
    module = make(family, 64, 128, 0.5).train(train)
    for shape in [(0, 128), (2, 0, 128)]:
        got = module(torch.randn(*shape, dtype=torch.float64))
        assert got.shape == torch.nn.Linear(128, 64)(torch.randn(*shape)).shape


@pytest.mark.parametrize("family", FAMILIES)
def test_a_layer_made_under_inference_mode_projects_and_runs(family: str) -> None:
    """Serving code builds and loads layers under ``torch.inference_mode``; their parameters
    are then inference tensors (no version counters, no autograd): projection and forward
    must not need either."""
    cls = get_family(family)
    with torch.inference_mode():
        w, bias = torch.randn(64, 128, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
        x = torch.randn(300, 128, dtype=torch.float64)
        gram = x.T @ x / len(x)
        modules = [cls.from_dense(w, bias, rho=0.5), cls.from_dense(w, bias, rho=0.5, gram=gram)] if cls.compressible else [make(family, 64, 128, 0.5)]
        for module in modules:
            module.eval()
            torch.testing.assert_close(module(x), x @ module.to_dense().T + module.bias, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", COMPRESSIBLE)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_fitted_in_float32_and_stored_in_their_dtype(family: str, dtype: torch.dtype) -> None:
    w = torch.randn(64, 128)
    module = get_family(family).from_dense(w.to(dtype), rho=0.5)
    assert {p.dtype for p in module.parameters()} == {dtype}
    reference = get_family(family).from_dense(w.to(dtype).float(), rho=0.5)  # the same fit, in float32
    for (name, got), (_, want) in zip(module.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(got, want.to(got.dtype)), name  # its factors, rounded once


def test_build_takes_device_and_dtype_like_nn_linear() -> None:
    from structbench import build

    layer = build("lowrank", 128, 64, rank=4, device="cpu", dtype=torch.float64)
    assert {p.dtype for p in layer.parameters()} == {torch.float64} and layer.U.device.type == "cpu"


def test_swap_linears_keeps_a_float64_model_in_float64() -> None:
    from structbench import swap_linears

    model = torch.nn.Sequential(torch.nn.Linear(128, 64)).double()
    [record] = swap_linears(model, "lowrank", 0.5)
    assert next(model.parameters()).dtype == torch.float64
    w = model[0].to_dense().detach()
    assert w.dtype == torch.float64 and record.rel_error is not None
