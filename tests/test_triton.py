"""The fused Triton forwards, for every family that has one (registry-driven: a class whose
``impls`` include ``triton``). Without a GPU they run under Triton's interpreter (set in
conftest), which executes each program in NumPy: small shapes, token counts that are not
multiples of the tiles, every dtype the kernels accept."""
from __future__ import annotations

import pytest
import torch

from structbench.errors import StructbenchError
from structbench.families import build, get_family, hparams_for, list_families

pytest.importorskip("triton")

FUSED = [f for f in list_families() if "triton" in get_family(f).impls]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(64, 64), (128, 64), (64, 128)]  # (out_features, in_features)
TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _pair(family: str, shape: tuple[int, int], dtype: torch.dtype, bias: bool = True):
    out_f, in_f = shape
    hp = hparams_for(family, 0.5, out_features=out_f, in_features=in_f).hparams
    torch.manual_seed(0)
    reference = build(family, in_f, out_f, bias=bias, **hp).to(device=DEVICE, dtype=dtype).eval()
    if bias:
        torch.nn.init.normal_(reference.bias)
    fused = build(family, in_f, out_f, bias=bias, **hp).to(device=DEVICE, dtype=dtype).eval()
    fused.load_state_dict(reference.state_dict())
    fused.use_impl("triton")
    return reference, fused


def test_monarch_and_blast_have_fused_forwards() -> None:
    assert {"monarch", "blast"} <= set(FUSED)


@pytest.mark.parametrize("family", FUSED)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, *(pytest.param(d, marks=pytest.mark.slow) for d in (torch.float16, torch.bfloat16))],
                         ids=str)  # the half dtypes in the slow tier: the interpreter is slow and the tile logic is shared
@pytest.mark.parametrize("bias", [True, False])
def test_fused_forward_equals_the_pytorch_one(family: str, shape: tuple[int, int], dtype: torch.dtype, bias: bool) -> None:
    reference, fused = _pair(family, shape, dtype, bias)
    for tokens in (1, 5, 33):
        x = torch.randn(tokens, shape[1], device=DEVICE, dtype=dtype)
        with torch.no_grad():
            want, got = reference(x), fused(x)
        assert got.shape == want.shape and got.dtype == dtype
        err = ((got.float() - want.float()).norm() / want.float().norm()).item()
        assert err < TOLERANCE[dtype], (tokens, err)


@pytest.mark.parametrize("family", FUSED)
def test_fused_forward_differentiates_through_the_pytorch_backward(family: str) -> None:
    reference, fused = _pair(family, (64, 128), torch.float32)
    x = torch.randn(2, 3, 128, device=DEVICE)
    grads = []
    for module in (reference, fused):
        xi = x.clone().requires_grad_()
        (module(xi) * torch.linspace(-1, 1, 64, device=DEVICE)).sum().backward()
        grads.append([xi.grad] + [p.grad for p in module.parameters()])
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_family_without_a_fused_forward_says_so() -> None:
    module = build("lowrank", 64, 64, rank=8)
    with pytest.raises(StructbenchError, match="lowrank has no 'triton' forward; accepted: torch"):
        module.use_impl("triton")
