"""Suite ``train-lm``: a small byte-level GPT trained from scratch on the Wikipedia text with its
block linears replaced by each family at several parameter budgets; validation perplexity (per
byte) against the whole model's MACs relative to dense.

One recipe for every family; one case = one (family, rho, seed) training run
(``structbench.train.task``, the task itself in ``structbench.train.language``).
"""
from __future__ import annotations

from pathlib import Path

from structbench.train.language import GPT_TASK
from structbench.train.task import make_suite

SUITE = make_suite(
    "train-lm", GPT_TASK,
    description="A small byte-level GPT trained from scratch on Wikipedia text with structured block linears: "
    "validation perplexity per byte vs whole-model MACs relative to dense (fvcore) per family and parameter budget",
    config_path=Path(__file__).with_name("default.yaml"),
)
