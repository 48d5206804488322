"""Shared linear algebra used by several families' projections and forwards."""
from __future__ import annotations

from typing import Callable

import torch

CHUNK_FLOATS = 1 << 20
"""Intermediate floats (4 MiB in float32) a chunked forward keeps per chunk of tokens (Kronecker
sums at 1024x1024, rho 0.5, 1 MiB per token: efficiency at 128-512 tokens 0.34 unchunked,
0.52-0.66 in chunks of 4-16 tokens)."""


def svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors ``(U sqrt(S), sqrt(S) V^T)`` of ``w`` (batched over leading dims).

    Splitting ``sqrt(S)`` over both sides keeps the factors' scales balanced, which
    matters when they are trained further.
    """
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[..., :rank].sqrt()
    return u[..., :, :rank] * root.unsqueeze(-2), root.unsqueeze(-1) * vh[..., :rank, :]


def block_matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` batched over blocks, plus ``bias`` split evenly over the blocks (``(blocks, p)``
    or flat ``blocks * p``) through ``baddbmm``'s beta term, so adding it costs no extra pass."""
    if bias is None:
        return torch.bmm(a, b)
    return torch.baddbmm(bias.reshape(a.shape[0], 1, -1), a, b)


def in_token_chunks(forward: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], x: torch.Tensor,
                    bias: torch.Tensor | None, floats_per_token: int, rows: int | None = None) -> torch.Tensor:
    """``forward(x, bias)``, over consecutive chunks of rows of ``x`` when the whole call's
    intermediate (``floats_per_token`` per row) would exceed ``CHUNK_FLOATS``: ``rows`` per
    chunk if the family measured a count, else as many as fit the budget (one at least). For
    families whose intermediate is many times the input (BTT, Kronecker sums): in one pass
    over all tokens it streams through memory twice, in chunks it stays in cache between the
    two products that write and read it.

    Each chunk's output is copied into one output allocated up front and then dropped:
    holding the chunks' outputs for a ``cat`` keeps a small block alive above every chunk's
    freed intermediates, so glibc cannot reuse them and the heap grows by one intermediate
    per chunk (measured: Kronecker 4096x4096, rho 0.5, one 16 MB intermediate per token, a
    64-token call grew the resident set by 1,008 MB with ``cat`` and 54 MB this way; at 512
    tokens the ``cat`` version peaked at 8.6 GB)."""
    tokens = x.shape[0]
    if tokens * floats_per_token < CHUNK_FLOATS:
        return forward(x, bias)
    rows = rows or max(1, CHUNK_FLOATS // floats_per_token)
    first = forward(x[:rows], bias)
    out = first.new_empty(tokens, *first.shape[1:])
    out[:rows] = first
    del first
    for start in range(rows, tokens, rows):
        out[start : start + rows] = forward(x[start : start + rows], bias)
    return out


def interleave_blocks(z: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``(b, N, s)`` block outputs as the ``(N, s b)`` rows whose column ``i b + l`` is row ``i`` of
    block ``l`` (Monarch's and BTT's output order), plus ``bias``, in one pass over the output.

    Adding the bias in that pass replaces ``baddbmm``'s copy of it into the block products'
    output; the bias goes first so that the sum comes out in the contiguous ``(N, s, b)``
    order (with the permuted operand first it keeps that operand's layout, and the reshape
    would copy once more)."""
    b, tokens, s = z.shape
    interleaved = z.permute(1, 2, 0)  # (N, s, b)
    if bias is not None:
        interleaved = torch.add(bias.view(s, b), interleaved)
    return interleaved.reshape(tokens, s * b)


def relative_error(w: torch.Tensor, approx: torch.Tensor) -> float:
    """``||w - approx||_F / ||w||_F`` (0 for a zero ``w`` only when ``approx`` is zero too)."""
    num = torch.linalg.matrix_norm(w - approx).item()
    den = torch.linalg.matrix_norm(w).item()
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def solve_right(grad: torch.Tensor, gram: torch.Tensor, delta: float | torch.Tensor) -> torch.Tensor:
    """``grad @ (gram + delta I)^-1`` for batched symmetric positive semi-definite ``gram``
    (``delta`` a number or a tensor broadcasting against ``gram``'s batch dims plus two).

    Cholesky first (the common, fast case); each matrix whose damped Gram is numerically
    indefinite falls back to a general solve on its own, so a matrix's result does not depend
    on the others solved with it. A plain ``0`` damping uses ``gram`` as it is (a caller that
    damped a large batch in place saves the copy).
    """
    if isinstance(delta, (int, float)) and delta == 0:
        damped = gram
    else:
        damped = gram + delta * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    chol, info = torch.linalg.cholesky_ex(damped)
    out = torch.cholesky_solve(grad.transpose(-1, -2), chol).transpose(-1, -2)
    failed = info != 0
    if bool(failed.any()):
        if failed.dim() == 0:
            return torch.linalg.solve(damped, grad.transpose(-1, -2)).transpose(-1, -2)
        grads = grad.expand(*damped.shape[:-2], *grad.shape[-2:])
        out[failed] = torch.linalg.solve(damped[failed], grads[failed].transpose(-1, -2)).transpose(-1, -2)
    return out


def permute_last(t: torch.Tensor, *order: int) -> torch.Tensor:
    """``t`` with its last ``len(order)`` dims permuted by ``order`` (indices among those dims),
    any leading dims kept: the layout changes of the projections, for one matrix or a stack."""
    lead = t.dim() - len(order)
    return t.permute(*range(lead), *(lead + o for o in order))
