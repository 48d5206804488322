"""The pre-LayerNorm transformer block shared by the small ViT and the small GPT.

Its four linears are named ``qkv``, ``proj``, ``fc1``, ``fc2`` (``BLOCK_LINEARS``): the layers
a structured family replaces. Attention is ``F.scaled_dot_product_attention`` (one fused
kernel on CPU); ``structure.model_macs`` counts its two matmuls, which fvcore does not.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from structbench.initialization import unit_gain_

BLOCK_LINEARS = r"\.(qkv|proj|fc1|fc2)$"
"""Qualified-name pattern of the block linears (for ``structbench.swap.swap_linears``)."""
RESIDUAL_LINEARS = r"\.(proj|fc2)$"
"""The block linears whose output is added to the residual stream (what a zero-initialised
residual output starts at zero, ``structbench.train.scaling``)."""


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, causal: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def init_weights_(model: nn.Module, embedding_std: float = 0.02) -> None:
    """Dense linears get the same unit-gain rule as every family (``structbench.initialization``) and
    zero biases, so the dense reference and the structured models differ only in structure;
    embeddings start small (nanoGPT's 0.02) since the pre-LN blocks normalise them anyway."""
    for module in model.modules():
        if type(module) is nn.Linear:
            unit_gain_(module.weight, fan_in=module.in_features)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=embedding_std)
