"""A small Vision Transformer for single-channel images (Fashion-MNIST's 28x28).

Non-overlapping ``patch x patch`` patches, flattened and embedded by one linear
(``patch_embed``, replaceable like the block linears), a class token, learned positions,
``depth`` pre-LN blocks and a linear head on the final class token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from structbench.train.blocks import Block, init_weights_


@dataclass(frozen=True)
class ViTConfig:
    image: int = 28
    patch: int = 7
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    classes: int = 10

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + 1


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        if cfg.image % cfg.patch:
            raise ValueError(f"patch {cfg.patch} does not tile a {cfg.image}x{cfg.image} image")
        self.cfg = cfg
        self.patch_embed = nn.Linear(cfg.patch * cfg.patch, cfg.dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos = nn.Parameter(torch.zeros(1, cfg.tokens, cfg.dim))
        self.blocks = nn.Sequential(*[Block(cfg.dim, cfg.heads, cfg.mlp_ratio, causal=False) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.classes)
        init_weights_(self)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, H, W)`` float -> logits ``(B, classes)``."""
        b, p = images.shape[0], self.cfg.patch
        patches = images.unfold(1, p, p).unfold(2, p, p).reshape(b, -1, p * p)
        x = torch.cat([self.cls.expand(b, -1, -1), self.patch_embed(patches)], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])
