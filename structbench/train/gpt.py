"""A nanoGPT-style byte-level language model: 256-symbol vocabulary, so the embedding and the
softmax stay small on CPU and the block linears hold most of the compute."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from structbench.train.blocks import Block, init_weights_

VOCAB = 256


@dataclass(frozen=True)
class GPTConfig:
    context: int = 128
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(VOCAB, cfg.dim)
        self.pos = nn.Embedding(cfg.context, cfg.dim)
        self.blocks = nn.Sequential(*[Block(cfg.dim, cfg.heads, cfg.mlp_ratio, causal=True) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, VOCAB, bias=False)
        init_weights_(self)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx (B, T)`` byte ids -> next-byte logits ``(B, T, 256)``."""
        t = idx.shape[1]
        if t > self.cfg.context:
            raise ValueError(f"sequence of {t} exceeds the context of {self.cfg.context}")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        return self.head(self.norm(self.blocks(x)))
