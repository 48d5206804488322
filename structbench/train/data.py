"""Training data: Fashion-MNIST images and Wikipedia bytes, as plain tensors.

Everything fits in memory (60k 28x28 images are 47 MB as bytes; the text is a few MB), so
batches are index gathers driven by an explicit ``torch.Generator``: the data order and the
augmentation depend on the recipe's seed only, never on how many random numbers a family's
construction drew.
"""
from __future__ import annotations

import functools
import gzip
import struct
from pathlib import Path

import torch

from structbench.errors import StructbenchError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (plain or ``.gz``) of unsigned bytes as a ``uint8`` tensor of its shape."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise StructbenchError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8)
    if data.numel() != torch.Size(shape).numel():
        raise StructbenchError(f"{path}: header says {shape}, file holds {data.numel()} values")
    return data.view(*shape)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise StructbenchError(f"Fashion-MNIST file {name}(.gz) not found under {root}: {FASHION_MNIST_INSTALL}")


def require_fashion_mnist(root: str | Path) -> None:
    """Raise, naming the file and how to install the set, unless all four files are under ``root``."""
    for names in _FILES.values():
        for name in names:
            _find(Path(root), name)


def fashion_mnist_files(root: str | Path = FASHION_MNIST_DIR) -> dict[str, Path]:
    """The four IDX files under ``root``, by name, for provenance."""
    return {name: _find(Path(root), name) for names in _FILES.values() for name in names}


@functools.lru_cache(maxsize=4)
def fashion_mnist(split: str, root: str | Path = FASHION_MNIST_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (N, 28, 28), labels int64 (N,))`` of the ``train`` or ``test`` split."""
    if split not in _FILES:
        raise StructbenchError(f"unknown Fashion-MNIST split {split!r}; accepted: {', '.join(_FILES)}")
    images, labels = (read_idx(_find(Path(root), name)) for name in _FILES[split])
    if images.shape[0] != labels.shape[0]:
        raise StructbenchError(f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels.long()


def normalise(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Bytes to floats with the training set's mean and std (so inputs have unit variance)."""
    return (images.float() / 255 - mean) / std


def shift_and_flip(images: torch.Tensor, pad: int, gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    """The augmentation: each image shifted by up to ``pad`` pixels each way (zero fill, a
    random crop of the padded image) and, with ``flip``, mirrored left-right with probability 1/2."""
    b, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy, dx = (torch.randint(0, 2 * pad + 1, (b,), generator=gen) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    out = padded[torch.arange(b)[:, None, None], rows, cols]
    if not flip:
        return out
    mirrored = torch.rand(b, generator=gen) < 0.5
    return torch.where(mirrored[:, None, None], out.flip(-1), out)


@functools.lru_cache(maxsize=4)
def wiki_bytes(split: str) -> torch.Tensor:
    """One split of the Wikipedia text (``structbench.models.wikitext``) as UTF-8 bytes."""
    from structbench.models.wikitext import wiki_text

    return torch.frombuffer(bytearray(wiki_text(split).encode("utf-8")), dtype=torch.uint8).long()


def random_windows(stream: torch.Tensor, batch: int, context: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random windows: inputs ``(batch, context)`` and next-byte targets."""
    if stream.numel() <= context + 1:
        raise StructbenchError(f"text of {stream.numel()} bytes is too short for a context of {context}")
    start = torch.randint(0, stream.numel() - context - 1, (batch,), generator=gen)
    idx = start[:, None] + torch.arange(context + 1)
    windows = stream[idx]
    return windows[:, :-1], windows[:, 1:]


def fixed_windows(stream: torch.Tensor, context: int, max_bytes: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive non-overlapping windows over the first ``max_bytes`` of ``stream``: the
    same evaluation text for every model; every byte after the first is predicted once."""
    usable = stream[: max_bytes + 1] if max_bytes is not None else stream
    n = (usable.numel() - 1) // context
    if n < 1:
        raise StructbenchError(f"evaluation text of {usable.numel()} bytes is shorter than one context of {context}")
    x = usable[: n * context].view(n, context)
    y = usable[1 : n * context + 1].view(n, context)
    return x, y
