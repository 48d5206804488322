"""Evaluating a causal language model: perplexity, zero-shot multiple choice, size and speed.

Works on any Hugging Face causal LM (``model(input_ids).logits``), dense or with
structured layers swapped in. The scoring follows lm-evaluation-harness so numbers mean
what readers expect:

* perplexity: ``exp`` of the mean next-token negative log-likelihood over fixed windows
  of ``window`` tokens taken every ``stride`` tokens; each window scores only the tokens
  the previous window did not (all of them for the first), so with ``stride < window``
  every scored token sees at least ``window - stride`` tokens of context. Each window's
  summed loss and scored tokens are kept: the windows are the units an interval
  resamples (``structbench.stats``).
* the tokenizer's own prefix: a model whose tokenizer starts every text with a BOS token
  (Gemma) is fed it before every window, calibration and training sequence and context,
  as it was trained; it is context only, never a scored token (``bos_prefix``). Llama-style
  tokenizers that add nothing (SmolLM2) get no prefix.
* multiple choice: the summed log-likelihood of each answer's tokens given the context,
  where the answer's tokens are those of ``tokenize(context + answer)`` after the
  context's (lm-eval's split, which keeps the tokenizer's merges across the boundary); an
  item's answers share one forward of its context (``loglikelihoods``).
  ``acc`` takes the argmax of the sum, ``acc_norm`` of the sum divided by the answer's
  length in characters.
"""
from __future__ import annotations

import inspect
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from structbench.errors import StructbenchError
from structbench.measure.flops import fvcore_macs
from structbench.measure.memory import module_bytes
from structbench.models.tasks import MultipleChoice
from structbench.stats import mean_stderr, spread


# ---- perplexity ----------------------------------------------------------------------
def text_token_ids(tokenizer: Any, texts: Iterable[str], max_tokens: int | None = None) -> torch.Tensor:
    """Articles tokenised and joined by the EOS token, cut at ``max_tokens`` (all when None).

    Joining whole articles in a fixed order (not sampling spans) makes the evaluation
    text identical for every model scored.
    """
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    return torch.tensor(ids[:max_tokens], dtype=torch.long)


def bos_prefix(tokenizer: Any) -> tuple[int, ...]:
    """The token ids the tokenizer puts before every text (its BOS, for Gemma), found by
    tokenising a word with and without special tokens; ``()`` when it adds none in front."""
    plain = tokenizer("text", add_special_tokens=False)["input_ids"]
    full = tokenizer("text")["input_ids"]
    cut = len(full) - len(plain)
    return tuple(full[:cut]) if cut > 0 and full[cut:] == plain else ()


def with_prefix(x: torch.Tensor, prefix: Sequence[int]) -> torch.Tensor:
    """``(batch, seq)`` ids with ``prefix`` put before every row."""
    if not prefix:
        return x
    head = torch.tensor(prefix, dtype=x.dtype, device=x.device).expand(x.shape[0], len(prefix))
    return torch.cat([head, x], dim=1)


def window_starts(n_tokens: int, window: int, stride: int) -> list[int]:
    """Starts of the full windows over ``n_tokens`` tokens (a short tail is dropped)."""
    if window < 2 or not 0 < stride <= window:
        raise ValueError(f"need window >= 2 and 0 < stride <= window, got window={window}, stride={stride}")
    return list(range(0, n_tokens - window + 1, stride))


@dataclass
class Perplexity:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # scored tokens
    windows: int
    window_nll: tuple[float, ...] = ()  # per window: summed NLL of its scored tokens (nats)
    window_tokens: tuple[int, ...] = ()  # per window: its scored tokens


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, window: int, stride: int, batch_size: int = 2,
               progress: Callable[[int, int], None] | None = None, prefix: Sequence[int] = ()) -> Perplexity:
    """Perplexity of ``model`` on the token sequence ``ids`` (see the module docstring); each
    window is fed after ``prefix``, which adds context and no scored token."""
    starts = window_starts(len(ids), window, stride)
    if not starts:
        raise ValueError(f"{len(ids)} tokens do not fill one window of {window}")
    device = next(model.parameters()).device
    sums: list[float] = []
    counts: list[int] = []
    for b in range(0, len(starts), batch_size):
        chunk = starts[b:b + batch_size]
        x = torch.stack([ids[s:s + window] for s in chunk]).to(device)
        logits = model(with_prefix(x, prefix)).logits[:, len(prefix):-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # (B, window - 1)
        for row, start in zip(nll, chunk):
            # later windows score the tokens the previous one did not (a token at the
            # window's first position has no context there and is never scored)
            scored = row if start == 0 else row[max(0, window - 1 - stride):]
            sums.append(float(scored.double().sum()))
            counts.append(scored.numel())
        if progress is not None:
            progress(min(b + batch_size, len(starts)), len(starts))
    mean = math.fsum(sums) / sum(counts)
    return Perplexity(math.exp(mean), mean, sum(counts), len(starts), tuple(sums), tuple(counts))


# ---- multiple choice -----------------------------------------------------------------
def continuation_ids(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: the continuation is what ``tokenize(context + continuation)`` adds."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    return whole[:n_context], whole[n_context:]


@dataclass
class _Pack:
    """Requests that share their context's tokens, scored in one sequence: the context once,
    then each continuation but its last token, every continuation seeing the context and its
    own earlier tokens only (a block-causal mask, positions as if it were alone)."""

    context: list[int]
    continuations: list[tuple[int, list[int]]] = field(default_factory=list)  # (request index, its tokens)

    def tokens(self) -> list[int]:
        return self.context + [t for _, cont in self.continuations for t in cont[:-1]]

    def __len__(self) -> int:
        return len(self.context) + sum(len(cont) - 1 for _, cont in self.continuations)

    def layout(self) -> tuple[list[int], list[tuple[int, int]]]:
        """Position ids of ``tokens()``, and each continuation's ``[start, end)`` in them."""
        positions, blocks, start = list(range(len(self.context))), [], len(self.context)
        for _, cont in self.continuations:
            positions += range(len(self.context), len(self.context) + len(cont) - 1)
            blocks.append((start, start + len(cont) - 1))
            start += len(cont) - 1
        return positions, blocks


def _packs(encoded: Sequence[tuple[list[int], list[int]]], limit: int) -> list[_Pack]:
    """The requests grouped by identical context tokens, each group in as few packs of at most
    ``limit`` tokens as it takes; a context too long for its continuation keeps its right end
    (the continuation is never cut)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(encoded):
        groups.setdefault(tuple(ctx), []).append(i)
    packs: list[_Pack] = []
    for ctx, members in groups.items():
        current: _Pack | None = None
        for i in members:
            cont = encoded[i][1]
            if current is None or len(current) + len(cont) - 1 > limit:
                room = max(1, limit - (len(cont) - 1))
                current = _Pack(list(ctx)[-room:])
                packs.append(current)
            current.continuations.append((i, cont))
    return packs


def _block_pattern(packs: Sequence[_Pack], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which key each query of packs padded on the right to ``width`` may see, ``(batch,
    width, width)`` (a padding position sees itself only), and the position ids."""
    allowed = torch.zeros((len(packs), width, width), dtype=torch.bool)
    positions = torch.zeros((len(packs), width), dtype=torch.long)
    for r, pack in enumerate(packs):
        n, pos_ids, blocks = len(pack.context), *pack.layout()
        allowed[r, :n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
        for start, end in blocks:
            allowed[r, start:end, :n] = True
            allowed[r, start:end, start:end] = torch.ones(end - start, end - start, dtype=torch.bool).tril()
        positions[r, :len(pos_ids)] = torch.tensor(pos_ids)
        used = len(pos_ids)
        allowed[r, range(used, width), range(used, width)] = True
    return allowed, positions


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A ``(batch, 1, q, k)`` mask to add to attention scores: 0 where allowed, the dtype's
    lowest value elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


@torch.no_grad()
def loglikelihoods(model: nn.Module, tokenizer: Any, requests: Sequence[tuple[str, str]], batch_size: int = 16,
                   max_length: int = 1024) -> list[float]:
    """Summed log-probability of each ``continuation`` given its ``context`` (after the
    tokenizer's ``bos_prefix``).

    Requests whose contexts tokenise alike (the answers of one item) are packed into one
    sequence of at most ``max_length`` tokens: the context is run once, which makes a
    multiple-choice item cost one context instead of one per answer. A model with
    sliding-window layers (Gemma3) gets a second mask for them, with the window applied to each
    request's own positions. The result equals scoring each request on its own up to float
    rounding (a test checks it). Packs are batched longest first with right padding. The
    logits are taken as
    ``output_embeddings(decoder(ids))``, which is how Llama- and Gemma3-style models compute
    them (a model with final logit soft-capping would need its own head here, and is refused).
    """
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None):
        raise StructbenchError("loglikelihoods: models with final logit soft-capping are not supported")
    window = getattr(config, "sliding_window", None)
    sliding = "sliding_attention" in (getattr(config, "layer_types", None) or ()) and isinstance(window, int)
    device = next(model.parameters()).device
    prefix = list(bos_prefix(tokenizer))
    encoded = []
    for context, continuation in requests:
        ctx, cont = continuation_ids(tokenizer, context, continuation)
        if not cont:
            raise ValueError(f"continuation {continuation!r} adds no tokens to its context")
        encoded.append((prefix + ctx, cont))
    packs = sorted(_packs(encoded, max_length), key=lambda p: -len(p))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dtype = next(model.parameters()).dtype
    dtype = dtype if dtype.is_floating_point else torch.float32
    out = [0.0] * len(encoded)
    for b in range(0, len(packs), batch_size):
        batch = packs[b:b + batch_size]
        width = max(len(pack) for pack in batch)
        x = torch.full((len(batch), width), pad, dtype=torch.long)
        for r, pack in enumerate(batch):
            tokens = pack.tokens()
            x[r, :len(tokens)] = torch.tensor(tokens)
        allowed, positions = _block_pattern(batch, width)
        masks: Any = _additive(allowed, dtype).to(device)
        if sliding:  # Gemma3 and its kind take one mask per attention type; a sliding layer's
            # query sees no key `window` or more of its own positions back, as Hugging Face's do
            near = positions[:, :, None] - positions[:, None, :] < window
            masks = {"full_attention": masks, "sliding_attention": _additive(allowed & near, dtype).to(device)}
        hidden = model.get_decoder()(input_ids=x.to(device), attention_mask=masks,
                                     position_ids=positions.to(device)).last_hidden_state
        rows, where, targets, owners = [], [], [], []
        for r, pack in enumerate(batch):
            _, blocks = pack.layout()
            for (i, cont), (start, _) in zip(pack.continuations, blocks):
                # the first token is predicted from the context's last position, the rest from the block
                where += [len(pack.context) - 1, *range(start, start + len(cont) - 1)]
                rows += [r] * len(cont)
                targets += cont
                owners.append((i, len(cont)))
        # the LM head only where a continuation token is predicted: it is a quarter of a
        # small model's MACs, and the log-softmax over the vocabulary at every position more
        logp = model.get_output_embeddings()(hidden[rows, where]).float().log_softmax(-1)
        picked = logp[torch.arange(len(targets)), torch.tensor(targets, device=device)]
        start = 0
        for i, n_cont in owners:
            out[i] = float(picked[start:start + n_cont].sum())
            start += n_cont
    return out


@dataclass
class ChoiceScores:
    """Accuracies over the items, each item's pick (by sum, and per character) and whether it
    was right (1) or not (0), so that two scorers or two models can be compared item for item."""

    acc: float
    acc_norm: float
    items: int
    picks: tuple[int, ...] = ()
    picks_norm: tuple[int, ...] = ()
    loglikelihoods: tuple[tuple[float, ...], ...] = ()
    correct: tuple[int, ...] = ()
    correct_norm: tuple[int, ...] = ()

    @property
    def acc_stderr(self) -> float:
        """lm-evaluation-harness' ``acc_stderr``: ``sqrt(acc (1 - acc) / (items - 1))``."""
        return mean_stderr(self.correct)

    @property
    def acc_norm_stderr(self) -> float:
        return mean_stderr(self.correct_norm)


def choice_scores(items: Sequence[MultipleChoice], loglikelihoods: Sequence[Sequence[float]]) -> ChoiceScores:
    """``acc`` (argmax of each item's summed log-likelihoods) and ``acc_norm`` (of the sums
    divided by each choice's length in characters)."""
    picks, picks_norm = [], []
    for item, ll in zip(items, loglikelihoods):
        norm = [s / len(c) for s, c in zip(ll, item.choices)]
        picks.append(max(range(len(ll)), key=ll.__getitem__))
        picks_norm.append(max(range(len(norm)), key=norm.__getitem__))
    correct = tuple(int(p == item.gold) for p, item in zip(picks, items))
    correct_norm = tuple(int(p == item.gold) for p, item in zip(picks_norm, items))
    return ChoiceScores(sum(correct) / len(items), sum(correct_norm) / len(items), len(items), tuple(picks),
                        tuple(picks_norm), tuple(tuple(ll) for ll in loglikelihoods), correct, correct_norm)


def multiple_choice(model: nn.Module, tokenizer: Any, items: Sequence[MultipleChoice], batch_size: int = 16) -> ChoiceScores:
    """``acc`` and ``acc_norm`` over ``items`` (see the module docstring)."""
    requests = [(item.context, choice) for item in items for choice in item.choices]
    scores = iter(loglikelihoods(model, tokenizer, requests, batch_size))
    return choice_scores(items, [[next(scores) for _ in item.choices] for item in items])


# ---- size and speed ------------------------------------------------------------------
def model_size(model: nn.Module) -> dict[str, int]:
    """Parameters and bytes, tied tensors counted once (``parameters()`` deduplicates)."""
    return {"params": sum(p.numel() for p in model.parameters()), "bytes": module_bytes(model)}


class _Logits(nn.Module):
    """``model(ids).logits`` as a plain tensor output, which fvcore's tracer needs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


def use_eager_attention(model: nn.Module) -> None:
    """Attention as explicit matmuls, so fvcore counts it (SDPA is one op it does not see)."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:  # older transformers
        model.config._attn_implementation = "eager"


@torch.no_grad()
def macs_per_token(model: nn.Module, tokens: int, vocab_size: int) -> tuple[float, dict[str, int]]:
    """fvcore MACs of one forward over ``tokens`` tokens, divided by ``tokens``.

    Includes attention (the model must use eager attention) and the LM head; the
    per-token figure therefore grows slowly with ``tokens`` through attention.
    """
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0)).to(device)
    count = fvcore_macs(_Logits(model).eval(), ids)
    return count.total / tokens, count.unsupported_ops


@dataclass
class Throughput:
    prefill_tokens_per_s: float
    generate_tokens_per_s: float
    repeats: int
    generate_spread: float
    """IQR / median of the decode speed over the repeats: a busy machine shows here first."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def throughput(model: nn.Module, vocab_size: int, prompt: int, generate: int, repeats: int) -> Throughput:
    """Median prefill and greedy-decode speed with the KV cache, batch 1.

    Prefill: one forward over a ``prompt``-token prompt. Generation: ``generate`` single
    -token steps after it, each feeding the argmax back with the cache (what
    ``generate(do_sample=False)`` does, without its bookkeeping in the timing).
    """
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab_size, (1, prompt), generator=torch.Generator().manual_seed(0)).to(device)
    # transformers 5 renamed ``past_key_values`` to ``cache``; accept both
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    prefill, decode = [], []
    for _ in range(repeats + 1):  # the first round warms up allocators and is dropped
        start = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        _sync(device)
        mid = time.perf_counter()
        for _ in range(generate):
            out = model(input_ids=out.logits[:, -1:].argmax(-1), use_cache=True, **{name: out[name]})
        _sync(device)
        end = time.perf_counter()
        prefill.append(prompt / (mid - start))
        decode.append(generate / (end - mid))
    return Throughput(statistics.median(prefill[1:]), statistics.median(decode[1:]), repeats, spread(decode[1:]))
