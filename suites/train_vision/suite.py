"""Suite ``train-vision``: a small ViT trained from scratch on Fashion-MNIST with its block
linears replaced by each family at several parameter budgets; test accuracy against the whole
model's MACs relative to dense.

One recipe (AdamW, warmup + cosine, epochs, shift-and-flip augmentation, seed) for every
family; one case = one (family, rho, seed) training run (``structbench.train.task``, the
task itself in ``structbench.train.vision``).
"""
from __future__ import annotations

from pathlib import Path

from structbench.train.task import make_suite
from structbench.train.vision import VIT

SUITE = make_suite(
    "train-vision", VIT,
    description="A small ViT trained from scratch on Fashion-MNIST with structured block linears: "
    "test accuracy vs whole-model MACs relative to dense (fvcore) per family and parameter budget",
    config_path=Path(__file__).with_name("default.yaml"),
)
