"""A plain MLP for single-channel images (Fashion-MNIST's 28x28): the structure papers'
simplest testbed, where the hidden ``dim x dim`` layers hold nearly all of the compute.

The flattened image is embedded by ``inp`` (784 -> dim, kept dense: its fan-in does not grow
with the width), passed through ``depth`` hidden layers ``hidden.<k>`` (the layers a family
replaces), each followed by GELU, and read out by a dense ``head``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from structbench.train.blocks import init_weights_

HIDDEN_LINEARS = r"^hidden\.\d+$"
"""Qualified-name pattern of the hidden linears (for ``structbench.swap.swap_linears``)."""


@dataclass(frozen=True)
class MLPConfig:
    image: int = 28
    dim: int = 256
    depth: int = 3
    classes: int = 10


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(cfg.image * cfg.image, cfg.dim)
        self.hidden = nn.ModuleList(nn.Linear(cfg.dim, cfg.dim) for _ in range(cfg.depth))
        self.head = nn.Linear(cfg.dim, cfg.classes)
        init_weights_(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, H, W)`` float -> logits ``(B, classes)``."""
        h = F.gelu(self.inp(images.flatten(1)))
        for layer in self.hidden:
            h = F.gelu(layer(h))
        return self.head(h)
