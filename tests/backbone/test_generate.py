"""Generation: sampling settings and statistics, UTF-8-safe streaming, stop rules, limits and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from backbone.config import ModelConfig
from backbone.generate import Sampler, SamplingConfig, StreamDecoder
from backbone.loader import wrap_teacher
from backbone.model import Transformer

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.mark.parametrize(("field", "value"), [
    ("max_new_tokens", 0), ("max_new_tokens", -3), ("max_new_tokens", 2.5), ("max_new_tokens", True),
    ("temperature", -0.1), ("temperature", math.nan), ("temperature", math.inf), ("temperature", "hot"),
    ("top_p", 0.0), ("top_p", 1.5), ("top_p", -1), ("seed", -1), ("seed", 1.5),
])
def test_invalid_sampling_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**{field: value})


def nucleus_reference(logits: list[float], temperature: float, top_p: float) -> list[float]:
    """Float64 nucleus distribution: the most probable tokens until their mass reaches top_p, renormalised."""
    scaled = [x / temperature for x in logits]
    peak = max(scaled)
    weights = [math.exp(x - peak) for x in scaled]
    probs = [w / sum(weights) for w in weights]
    kept, mass = set(), 0.0
    for index in sorted(range(len(probs)), key=lambda i: -probs[i]):
        if mass >= top_p:
            break
        kept.add(index)
        mass += probs[index]
    total = sum(probs[i] for i in kept)
    return [probs[i] / total if i in kept else 0.0 for i in range(len(probs))]


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.8), (1.3, 0.5), (2.0, 0.95)])
def test_sampling_follows_the_nucleus_distribution(temperature: float, top_p: float) -> None:
    logits = [2.0, 1.5, 1.0, 0.2, -1.0, -3.0]
    expected = nucleus_reference(logits, temperature, top_p)
    sampler = Sampler(SamplingConfig(temperature=temperature, top_p=top_p, seed=11))
    draws = 6000
    counts = [0] * len(logits)
    for _ in range(draws):
        counts[sampler(torch.tensor(logits))] += 1
    for index, probability in enumerate(expected):
        if probability == 0:
            assert counts[index] == 0
        else:  # five standard deviations of a binomial count
            assert abs(counts[index] / draws - probability) < 5 * math.sqrt(probability * (1 - probability) / draws)


def test_greedy_and_seeds() -> None:
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert Sampler(SamplingConfig())(logits) == int(logits.argmax())
    first = [Sampler(SamplingConfig(temperature=1.0, seed=5))(logits) for _ in range(3)]
    twin = Sampler(SamplingConfig(temperature=1.0, seed=5))
    other = Sampler(SamplingConfig(temperature=1.0, seed=6))
    assert first == [Sampler(SamplingConfig(temperature=1.0, seed=5))(logits) for _ in range(3)]
    assert [twin(logits) for _ in range(20)] != [other(logits) for _ in range(20)]


@pytest.mark.slow
def test_stream_decoder_never_splits_a_character(teacher) -> None:
    text = "Emoji 🙂🚀 and 東京 in one line, then ☕ café."
    ids = teacher.tokenizer.encode(text)
    table = teacher.tokenizer.token_bytes
    partial = [t for t in ids if _incomplete_utf8(table[t])]
    assert partial, "the text must contain tokens that hold part of a character"
    decoder = StreamDecoder(table)
    pieces = [decoder.push(t) for t in ids] + [decoder.flush()]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == text


def _incomplete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.slow
def test_answers_the_capital_of_france(teacher) -> None:
    answer = teacher.chat(QUESTION, SamplingConfig(max_new_tokens=48))
    assert "Paris" in answer.text
    assert answer.stop_reason == "end_of_turn" and answer.token_ids[-1] == teacher.tokenizer.end_of_turn_id


@pytest.mark.slow
def test_greedy_generation_matches_transformers(teacher, hf_reference) -> None:
    prompt = teacher.tokenizer.encode(teacher.tokenizer.render_chat(
        [{"role": "user", "content": "Write a haiku about rivers."}]))
    ours = teacher.generate(prompt, sampling=SamplingConfig(max_new_tokens=24)).token_ids
    with torch.no_grad():
        out = hf_reference.model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                                          eos_token_id=teacher.tokenizer.end_of_turn_id, pad_token_id=0)
    assert ours == out[0, len(prompt):].tolist()


@pytest.mark.slow
def test_stream_matches_generate_and_fills_the_state(teacher) -> None:
    prompt = teacher.tokenizer.encode(teacher.tokenizer.render_chat(QUESTION))
    sampling = SamplingConfig(max_new_tokens=40, temperature=0.8, top_p=0.9, seed=3)
    state = teacher.new_state()
    pieces = teacher.stream(prompt, state, sampling)
    streamed = []
    while True:
        try:
            streamed.append(next(pieces))
        except StopIteration as stop:
            reason = stop.value
            break
    whole = teacher.generate(prompt, sampling=sampling)
    assert "".join(streamed) == whole.text and reason == whole.stop_reason
    assert state.num_tokens == len(prompt) + len(whole.token_ids)


@pytest.mark.slow
def test_max_new_tokens_and_saved_state(teacher) -> None:
    prompt = teacher.tokenizer.encode(teacher.tokenizer.render_chat(QUESTION))
    state = teacher.new_state()
    result = teacher.generate(prompt, state, SamplingConfig(max_new_tokens=3))
    assert (len(result.token_ids), result.stop_reason, state.num_tokens) == (3, "max_new_tokens", len(prompt) + 3)
    restored = teacher.state_from_tensors(state.to_tensors(), state.metadata())
    assert torch.equal(teacher.step(42, restored), teacher.step(42, state))
    with pytest.raises(ValueError, match="different model weights"):
        teacher.state_from_tensors(state.to_tensors(), {**state.metadata(), "fingerprint": "0" * 64})


@pytest.mark.slow
def test_bad_prompts_get_clear_errors_and_leave_the_state_alone(teacher) -> None:
    state = teacher.new_state()
    teacher.prefill([1, 2, 3], state)
    with pytest.raises(ValueError, match="no tokens"):
        next(teacher.stream([], state))
    with pytest.raises(ValueError, match="8192-token context"):
        next(teacher.stream([42] * 8190, state))
    with pytest.raises(ValueError, match=r"\[0, 49152\)"):
        teacher.prefill([49152], state)
    with pytest.raises(ValueError, match=r"\[0, 49152\)"):
        teacher.step(-1, state)
    with pytest.raises(ValueError, match="8192-token context"):
        teacher.forward_logits(torch.zeros(1, 8193, dtype=torch.long))
    with pytest.raises(TypeError, match="SamplingConfig"):
        next(teacher.iter_tokens([5], state, {"temperature": 1}))
    assert state.num_tokens == 3


def test_generation_stops_when_the_context_is_full(teacher) -> None:
    config = ModelConfig(vocab_size=teacher.config.vocab_size, dim=16, num_layers=1, num_heads=2, num_kv_heads=1,
                         head_dim=8, ffn_dim=32, max_context=24)
    torch.manual_seed(0)
    small = wrap_teacher(Transformer(config).eval(), teacher.tokenizer, "tiny")
    stop_ids = teacher.tokenizer.stop_ids
    state = small.new_state()
    prompt = [t for t in range(100, 140) if t not in stop_ids][:20]
    result = small.generate(prompt, state, SamplingConfig(max_new_tokens=50))
    assert not stop_ids & set(result.token_ids), "a stop token would end generation early; change the seed"
    assert (result.stop_reason, len(result.token_ids), state.num_tokens) == ("context_full", 4, 24)
    with pytest.raises(ValueError, match="24-token context"):
        small.prefill([5], state)


@pytest.mark.slow
def test_chat_command_answers_and_keeps_the_conversation(teacher, model_cache, monkeypatch) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    monkeypatch.setenv("RILLET_DATA_DIR", str(model_cache.parent))  # its cache_dir is the fixture's cache
    monkeypatch.setenv("RILLET_DATABASE_URL", "sqlite://")
    questions = "What is the capital of France? Answer in one sentence.\nAnd of Italy? One sentence.\n\n"
    result = CliRunner().invoke(cli, ["chat", "--model", "teacher", "--max-new-tokens", "40"], input=questions)
    assert result.exit_code == 0, result.output
    assert "Paris" in result.output and "Rome" in result.output
    refused = CliRunner().invoke(cli, ["chat", "--temperature", "-1"], input="\n")
    assert refused.exit_code == 2 and "temperature" in refused.output


@pytest.mark.slow
def test_stopping_early_keeps_every_token_seen(teacher) -> None:
    prompt = teacher.tokenizer.encode(teacher.tokenizer.render_chat(QUESTION))
    state = teacher.new_state()
    tokens = teacher.iter_tokens(prompt, state, SamplingConfig(max_new_tokens=50))
    seen = [next(tokens) for _ in range(3)]
    tokens.close()
    assert state.num_tokens == len(prompt) + len(seen)
    pieces = teacher.stream(prompt, teacher.new_state())
    first = next(pieces)
    pieces.close()
    assert first and teacher.generate(prompt, sampling=SamplingConfig(max_new_tokens=50)).text.startswith(first)
