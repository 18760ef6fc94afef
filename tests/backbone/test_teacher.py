"""The Llama transformer: float64 reference on tiny random configs, the real model against `transformers`,
the KV cache against the full forward, captures for attention transfer, and cache round trips."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from backbone.config import ModelConfig
from backbone.kv_cache import ContextOverflowError, KVCache
from backbone.loader import load_model
from backbone.model import Transformer, build_transformer

TINY = ModelConfig(vocab_size=97, dim=48, num_layers=2, num_heads=6, num_kv_heads=2, head_dim=8, ffn_dim=80,
                   max_context=600, rope_theta=10_000.0, norm_eps=1e-5)


def tiny_model(config: ModelConfig = TINY, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)  # norms start at 1; move them so a wrong norm cannot pass
    return model


def reference_logits(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """The same network written out plainly in float64: per-position angles, explicit mask, repeated kv heads."""
    c = model.config
    p = {name: t.detach().double() for name, t in model.state_dict().items()}

    def norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.norm_eps) * weight

    t = ids.shape[1]
    angles = torch.tensor([[pos / c.rope_theta ** (2 * i / c.head_dim) for i in range(c.head_dim // 2)]
                           for pos in range(t)], dtype=torch.float64)

    def rotate(x: torch.Tensor) -> torch.Tensor:  # (B, H, T, D): pair dimension i with i + D/2
        first, second = x[..., : c.head_dim // 2], x[..., c.head_dim // 2 :]
        return torch.cat([first * angles.cos() - second * angles.sin(),
                          second * angles.cos() + first * angles.sin()], dim=-1)

    x = p["embed.weight"][ids]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for i in range(c.num_layers):
        w = {k.removeprefix(f"layers.{i}."): v for k, v in p.items() if k.startswith(f"layers.{i}.")}
        h = norm(x, w["attention_norm.weight"])
        q = (h @ w["attention.q_proj.weight"].T).unflatten(-1, (c.num_heads, c.head_dim)).transpose(1, 2)
        k = (h @ w["attention.k_proj.weight"].T).unflatten(-1, (c.num_kv_heads, c.head_dim)).transpose(1, 2)
        v = (h @ w["attention.v_proj.weight"].T).unflatten(-1, (c.num_kv_heads, c.head_dim)).transpose(1, 2)
        q, k = rotate(q), rotate(k)
        k, v = k.repeat_interleave(c.group_size, 1), v.repeat_interleave(c.group_size, 1)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(c.head_dim)).masked_fill(~causal, -math.inf)
        context = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = x + context @ w["attention.o_proj.weight"].T
        h = norm(x, w["mlp_norm.weight"])
        gate = h @ w["mlp.gate_proj.weight"].T
        x = x + (gate * torch.sigmoid(gate) * (h @ w["mlp.up_proj.weight"].T)) @ w["mlp.down_proj.weight"].T
    return norm(x, p["norm.weight"]) @ p["embed.weight"].T


@pytest.mark.parametrize("length", [1, 63, 500])
def test_full_forward_matches_float64_reference(length: int) -> None:
    model = tiny_model(seed=length)
    ids = torch.randint(0, TINY.vocab_size, (2, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        logits = model(ids)
    torch.testing.assert_close(logits.double(), reference_logits(model, ids), rtol=2e-6, atol=2e-5)


@pytest.mark.parametrize("chunks", [[1] * 5, [63, 1, 1], [300, 200, 1], [1, 499]])
def test_cached_decoding_matches_full_forward(chunks: list[int]) -> None:
    """Any split of the sequence into prefill chunks and single steps (crossing buffer growth) gives the same logits."""
    model = tiny_model(seed=1)
    ids = torch.randint(0, TINY.vocab_size, (1, sum(chunks)), generator=torch.Generator().manual_seed(7))
    reference = reference_logits(model, ids)[0]
    state = KVCache.empty(TINY)
    start = 0
    with torch.no_grad():
        for size in chunks:
            logits = model(ids[:, start : start + size], state)
            torch.testing.assert_close(logits[0].double(), reference[start : start + size], rtol=2e-6, atol=2e-5)
            start += size
    assert state.num_tokens == sum(chunks)
    assert all(layer.length == sum(chunks) for layer in state.layers)


def test_capture_gives_post_rope_qkv_and_outputs() -> None:
    model = tiny_model(seed=2)
    ids = torch.randint(0, TINY.vocab_size, (1, 63), generator=torch.Generator().manual_seed(3))
    captures: list[dict[str, torch.Tensor]] = []
    with torch.no_grad():
        model(ids, capture=captures)
    assert len(captures) == TINY.num_layers
    attention = model.layers[1].attention
    cap = captures[1]
    assert cap["q"].shape == (1, TINY.num_heads, 63, TINY.head_dim)
    assert cap["k"].shape == cap["v"].shape == (1, TINY.num_kv_heads, 63, TINY.head_dim)
    # Recompute in float64 from the captured input: position 0 is unrotated, later positions are rotated.
    x = cap["input"].double()
    raw_q = (x @ attention.q_proj.weight.double().T).unflatten(-1, (TINY.num_heads, TINY.head_dim)).transpose(1, 2)
    torch.testing.assert_close(cap["q"][:, :, 0].double(), raw_q[:, :, 0], rtol=0, atol=1e-5)
    assert not torch.allclose(cap["q"][:, :, 5].double(), raw_q[:, :, 5], atol=1e-3)
    torch.testing.assert_close(cap["q"].double().norm(dim=-1), raw_q.norm(dim=-1), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        direct = attention(cap["input"], model.rope(0, 63, torch.float32))
    torch.testing.assert_close(cap["output"], direct)


def test_full_forward_trains() -> None:
    model = tiny_model(seed=4).train()
    ids = torch.randint(0, TINY.vocab_size, (2, 33), generator=torch.Generator().manual_seed(5))
    logits = model(ids)
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_attention_is_replaceable_per_layer() -> None:
    """A module with the same forward signature takes over one layer, and receives that layer's state entry."""

    class Recording(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner, self.seen = inner, []

        def forward(self, x, rope, cache=None, capture=None):
            self.seen.append((rope.start, cache))
            return self.inner(x, rope, cache, capture)

    model = tiny_model(seed=6)
    model.layers[1].attention = Recording(model.layers[1].attention)
    state = KVCache.empty(TINY)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), state)
        model(torch.tensor([[4]]), state)
    assert [(start, cache is state.layers[1]) for start, cache in model.layers[1].attention.seen] == [(0, True),
                                                                                                  (3, True)]


def test_kv_cache_round_trip_clone_and_overflow() -> None:
    config = ModelConfig(**{**TINY.to_dict(), "max_context": 40})
    model = tiny_model(config, seed=8)
    ids = torch.randint(0, config.vocab_size, (1, 30), generator=torch.Generator().manual_seed(9))
    state = KVCache.empty(config, fingerprint="abc")
    with torch.no_grad():
        model(ids[:, :20], state)
        restored = KVCache.from_tensors(state.to_tensors(), state.metadata(), config, "abc")
        twin = state.clone()
        a = model(ids[:, 20:], state)
        b = model(ids[:, 20:], restored)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert twin.num_tokens == 20 and state.num_tokens == 30
        with pytest.raises(ContextOverflowError, match="40-token context"):
            model(ids[:, :11], state)
        assert state.num_tokens == 30  # refused before anything changed
        model(ids[:, :10], state)
    assert state.num_tokens == 40
    with pytest.raises(ValueError, match="different model weights"):
        KVCache.from_tensors(twin.to_tensors(), twin.metadata(), config, "other")
    with pytest.raises(ValueError, match="kind"):
        KVCache.from_tensors(twin.to_tensors(), {**twin.metadata(), "kind": "recurrent"}, config)
    other = ModelConfig(**{**config.to_dict(), "num_kv_heads": 3, "num_heads": 6})
    with pytest.raises(ValueError, match="does not match"):
        KVCache.from_tensors(twin.to_tensors(), twin.metadata(), other)


@pytest.mark.slow
def test_logits_match_transformers(teacher, hf_reference) -> None:
    text = ("<|im_start|>user\nExplain, in two sentences, why the sky is blue; then write a Python function "
            "`square(x)` that returns x**2.<|im_end|>\n<|im_start|>assistant\nThe sky looks blue because")
    ids = torch.tensor([teacher.tokenizer.encode(text)])
    assert ids.shape[1] > 40
    with torch.no_grad():
        ours = teacher.forward_logits(ids)
        theirs = hf_reference.model(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.slow
def test_real_model_cache_matches_full_forward(teacher) -> None:
    ids = teacher.tokenizer.encode("Rillet keeps long conversations about code in a fixed-size memory. " * 3)
    with torch.no_grad():
        full = teacher.forward_logits(torch.tensor([ids]))[0]
    state = teacher.new_state()
    last = teacher.prefill(ids[:-3], state, chunk_size=16)
    assert (last - full[-4]).abs().max() < 1e-4
    for offset, token in enumerate(ids[-3:]):
        logits = teacher.step(token, state)
        assert (logits - full[len(ids) - 3 + offset]).abs().max() < 1e-4


@pytest.mark.slow
def test_cached_conversion_equals_fresh_and_survives_damage(teacher, model_cache, tmp_path) -> None:
    """A damaged cache is rebuilt from the GGUF, and the rebuilt weights equal the cached ones exactly."""
    folder = next(p for p in model_cache.iterdir() if (p / "model.json").is_file())
    damaged = tmp_path / "cache"
    shutil.copytree(folder, damaged / folder.name)
    (damaged / folder.name / "model.safetensors").write_bytes(b"not safetensors")
    fresh = load_model("teacher", cache_dir=damaged)
    assert not fresh.info["cached"] and fresh.fingerprint == teacher.fingerprint
    assert len(teacher.fingerprint) == 64
    ours, theirs = teacher.model.state_dict(), fresh.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    again = load_model("teacher", cache_dir=damaged)
    assert again.info["cached"]


def test_build_transformer_ties_embeddings() -> None:
    model = tiny_model(seed=10)
    rebuilt = build_transformer(TINY, {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"})
    assert rebuilt.lm_head.weight is rebuilt.embed.weight
    ids = torch.tensor([[1, 5, 9]])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids), model(ids), rtol=0, atol=0)


def test_rotary_frequency_factors_round_trip_and_leave_plain_configs_as_they_were() -> None:
    """A plain config's dict (its fingerprint's input) has no factor key; a scaled one survives JSON."""
    assert "rope_freq_factors" not in TINY.to_dict()
    scaled = ModelConfig(**{**TINY.to_dict(), "rope_freq_factors": (1.0, 2.5, 4.0, 8.0)})
    assert ModelConfig.from_dict(json.loads(json.dumps(scaled.to_dict()))) == scaled
    with pytest.raises(ValueError, match="expected 4"):
        ModelConfig(**{**TINY.to_dict(), "rope_freq_factors": (1.0, 2.0)})
