"""Fused Triton forwards for Monarch and BLAST (optional: ``pip install -e .[triton]``).

Both families' PyTorch forwards spend memory traffic between their products: Monarch copies
its ``(b, N, q)`` intermediate into the stride permutation and again into the output order,
BLAST writes ``y`` and the coupled ``z`` (each ``(b, N, r)``) and reads them back. Here:

- ``strided_bmm`` is one batched-GEMM kernel whose operands and output are addressed through
  explicit strides, with the output's column index optionally split in two (``col // split``
  and ``col % split`` each with its own stride). Monarch's first product stores straight into
  the ``(l, N, k, r)`` order the second reads, and the second stores straight into output
  column ``i b + l``: no permutation is ever a copy.
- ``blast_coupled`` fuses BLAST's coupling into the last product: the A tile of
  ``out_i = z_i U_i^T`` is built in registers as ``sum_j s_ij * y_j``, so ``z`` never exists.

Autograd: the forward runs the kernels; the backward recomputes the family's own PyTorch
forward under autograd and differentiates that (the documented fallback: correct, as slow as
the PyTorch backward). Tests run the kernels on CPU under Triton's interpreter
(``TRITON_INTERPRET=1``); timing them needs a GPU.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK = (16, 16, 16) if INTERPRETED else (64, 64, 32)
"""``(BLOCK_M, BLOCK_N, BLOCK_K)``: the interpreter runs every program in NumPy, so it gets
the smallest tiles ``tl.dot`` accepts; on a GPU, a common tile for these sizes (untuned: no
GPU was available to tune on)."""


def _fp32_dot(dtype: torch.dtype) -> bool:
    """Products in exact float32 for float32 inputs (TF32 would miss the forward check's 1e-4),
    and for bfloat16 in the interpreter, whose NumPy ``dot`` has no bfloat16 (it returned
    garbage); half-precision inputs otherwise use the tensor cores."""
    return dtype == torch.float32 or (INTERPRETED and dtype == torch.bfloat16)


@triton.jit
def _tile_ranges(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Output rows and columns of this program (grid axes 0 and 1) and the offsets along ``K``."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rm, rn, tl.arange(0, BLOCK_K)


@triton.jit
def _load_tile(ptr, rows, cols, s_row, s_col, n_rows, n_cols):
    """The ``rows x cols`` tile at ``ptr`` with the given strides, zero outside the matrix."""
    return tl.load(ptr + rows[:, None] * s_row + cols[None, :] * s_col,
                   mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)


@triton.jit
def _store_tile(ptr, rows, cols, col_offsets, s_row, acc, n_rows, n_cols):
    """``acc`` into the ``rows x cols`` tile at ``ptr`` (row stride ``s_row``, column ``c`` at
    ``col_offsets[c]``), in ``ptr``'s dtype, skipping what lies outside the matrix."""
    tl.store(ptr + rows[:, None] * s_row + col_offsets[None, :], acc.to(ptr.dtype.element_ty),
             mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols))


@triton.jit
def _mma(acc, a, b, FP32_DOT: tl.constexpr):
    """``acc + a @ b``: exact float32 products, or in ``b``'s (half) precision on tensor cores."""
    if FP32_DOT:
        return acc + tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return acc + tl.dot(a.to(b.dtype), b)


@triton.jit
def _strided_bmm_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K, split,
                        sab, sam, sak, sbb, sbk, sbn, scb, scm, scn_hi, scn_lo, sbias_b, sbias_n,
                        HAS_BIAS: tl.constexpr, FP32_DOT: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    batch = tl.program_id(2)
    rm, rn, rk = _tile_ranges(BLOCK_M, BLOCK_N, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = _load_tile(a_ptr + batch * sab, rm, kk, sam, sak, M, K)
        b = _load_tile(b_ptr + batch * sbb, kk, rn, sbk, sbn, K, N)
        acc = _mma(acc, a, b, FP32_DOT)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + batch * sbias_b + rn * sbias_n, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    cols = (rn // split) * scn_hi + (rn % split) * scn_lo
    _store_tile(c_ptr + batch * scb, rm, rn, cols, scm, acc, M, N)


def strided_bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, out_strides: tuple[int, int, int, int],
                split: int, bias: torch.Tensor | None = None, bias_strides: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """``out[batch, i, j] = a[batch] @ b[batch] (+ bias)`` for 3-D views ``a (B, M, K)`` and
    ``b (B, K, N)`` of any strides, stored at ``out``'s storage offset
    ``batch scb + i scm + (j // split) scn_hi + (j % split) scn_lo`` (``out_strides``)."""
    batches, m, k = a.shape
    n = b.shape[2]
    bm, bn, bk = BLOCK
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn), batches)
    _strided_bmm_kernel[grid](
        a, b, out, bias if bias is not None else out, m, n, k, split,
        *a.stride(), *b.stride(), *out_strides, *bias_strides,
        HAS_BIAS=bias is not None, FP32_DOT=_fp32_dot(a.dtype),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return out


@triton.jit
def _blast_coupled_kernel(y_ptr, s_ptr, u_ptr, c_ptr, bias_ptr, M, N, K, blocks,
                          syj, sym, syk, ssi, ssj, ssk, sui, suk, sun, sci, scm, scn,
                          HAS_BIAS: tl.constexpr, FP32_DOT: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    i = tl.program_id(2)
    rm, rn, rk = _tile_ranges(BLOCK_M, BLOCK_N, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        z = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for j in range(0, blocks):  # z_i = sum_j s_ij * y_j, one tile at a time, never stored
            y = _load_tile(y_ptr + j * syj, rm, kk, sym, syk, M, K)
            s = tl.load(s_ptr + i * ssi + j * ssj + kk * ssk, mask=kk < K, other=0.0)
            z += y.to(tl.float32) * s.to(tl.float32)[None, :]
        u = _load_tile(u_ptr + i * sui, kk, rn, suk, sun, K, N)
        acc = _mma(acc, z, u, FP32_DOT)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + i * N + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    _store_tile(c_ptr + i * sci, rm, rn, rn * scn, scm, acc, M, N)


def _monarch_rows(x: torch.Tensor, L: torch.Tensor, R: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    b, q, p = L.shape
    s = R.shape[1]
    r = q // b
    tokens = x.shape[0]
    y = x.new_empty(b, tokens, b, r)  # (l, N, k, r): the order the second product reads
    # first: batch k, y[l, t, k, :] = x_k[t] L_k[l-th group]^T; column j = (l, r') split by r
    strided_bmm(x.view(tokens, b, p).transpose(0, 1), L.transpose(1, 2), y,
                (r, b * r, tokens * b * r, 1), split=r)
    out = x.new_empty(tokens, s * b)
    # second: batch l, out[t, i b + l] = y_l[t] R_l[i]^T + bias[i b + l]
    strided_bmm(y.view(b, tokens, q), R.transpose(1, 2), out, (1, s * b, 0, b), split=s + 1,
                bias=bias, bias_strides=(1, b))
    return out


def _blast_rows(x: torch.Tensor, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    b, p, r = U.shape
    q = V.shape[1]
    tokens = x.shape[0]
    y = x.new_empty(b, tokens, r)  # y_j = x_j V_j
    strided_bmm(x.view(tokens, b, q).transpose(0, 1), V, y, (tokens * r, r, 0, 1), split=r + 1)
    out = x.new_empty(tokens, b * p)
    bm, bn, bk = BLOCK
    grid = (triton.cdiv(tokens, bm), triton.cdiv(p, bn), b)
    _blast_coupled_kernel[grid](
        y, S, U, out, bias if bias is not None else out, tokens, p, r, b,
        *y.stride(), *S.stride(), U.stride(0), U.stride(2), U.stride(1), p, b * p, 1,
        HAS_BIAS=bias is not None, FP32_DOT=_fp32_dot(x.dtype),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return out


class _Fused(torch.autograd.Function):
    """Triton forward; backward by differentiating the family's PyTorch forward (recomputed)."""

    @staticmethod
    def forward(ctx, kernel: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor],
                x: torch.Tensor, bias: torch.Tensor | None, *factors: torch.Tensor) -> torch.Tensor:
        ctx.reference = reference
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, *(() if bias is None else (bias,)), *factors)
        with torch.no_grad():
            return kernel(x.contiguous(), *factors, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        saved = ctx.saved_tensors
        x, rest = saved[0], saved[1:]
        bias, factors = (rest[0], rest[1:]) if ctx.has_bias else (None, rest)
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in (x, bias, *factors) if t is not None]
        with torch.enable_grad():
            x_, *others = inputs
            bias_, factors_ = (others[0], others[1:]) if ctx.has_bias else (None, others)
            out = ctx.reference(x_, bias_, *factors_)
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad) if wanted else ())
        by_input = [next(grads) if t.requires_grad else None for t in inputs]
        grad_x = by_input.pop(0)
        grad_bias = by_input.pop(0) if ctx.has_bias else None
        return (None, None, grad_x, grad_bias, *by_input)


def monarch(x: torch.Tensor, L: torch.Tensor, R: torch.Tensor, bias: torch.Tensor | None,
            reference: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Monarch's forward on ``(N, n)`` rows; ``reference(x, bias, L, R)`` is its PyTorch forward."""
    return _Fused.apply(_monarch_rows, reference, x, bias, L, R)


def blast(x: torch.Tensor, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, bias: torch.Tensor | None,
          reference: Callable[..., torch.Tensor]) -> torch.Tensor:
    """BLAST's forward on ``(N, n)`` rows; ``reference(x, bias, U, S, V)`` is its PyTorch forward."""
    return _Fused.apply(_blast_rows, reference, x, bias, U, S, V)
