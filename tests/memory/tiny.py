"""A tiny random-weight model with the real tokenizer and chat format, for fast memory tests."""

from __future__ import annotations

import torch

from backbone.config import ModelConfig
from backbone.generate import LanguageModel
from backbone.kv_cache import KVCache
from backbone.model import Transformer
from backbone.state import ModelState
from backbone.student import StudentConfig, build_student, wrap_student
from backbone.tokenizer import ChatTokenizer


def tiny_config(vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                       ffn_dim=128, max_context=4096, rope_theta=10_000.0)


def tiny_model(tokenizer: ChatTokenizer, seed: int) -> LanguageModel:
    """Same shapes for every seed, different weights and fingerprint: states fit, but do not belong."""
    config = tiny_config(tokenizer.vocab_size)
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    fingerprint = f"tiny-{seed}"

    def make_state() -> KVCache:
        return KVCache.empty(config, fingerprint=fingerprint)

    def restore_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> KVCache:
        return KVCache.from_tensors(tensors, metadata, config, fingerprint)

    return LanguageModel(model, tokenizer, config, fingerprint, config.max_context, make_state, restore_state)


def greedy(model: LanguageModel, state: ModelState, n: int) -> list[int]:
    """n greedy tokens continuing `state` (prompt: the assistant prefix), ignoring stop tokens."""
    logits = model.prefill(model.tokenizer.encode(model.tokenizer.assistant_prefix), state)
    out = []
    for _ in range(n):
        token = int(logits.argmax())
        out.append(token)
        logits = model.step(token, state)
    return out


def tiny_student(tokenizer: ChatTokenizer, seed: int) -> LanguageModel:
    """The tiny model with hybrid attention (2 sinks, an 8-token window in the first layer, 12 and 5 for the
    second layer's two key/value heads, as the shipped student's layers and heads have windows of their own;
    linear attention beyond): a `RecurrentState` that has to carry the linear sums, not only recent tokens."""
    teacher = tiny_model(tokenizer, seed)
    torch.manual_seed(seed + 1000)
    student = build_student(teacher.model, StudentConfig(sinks=2).with_window("8,1:12/5")).eval()
    return wrap_student(student, teacher, f"untrained-{seed}")
