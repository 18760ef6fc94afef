"""The transcript -> token stream definition: what the live chat feeds is exactly what replay feeds."""

from __future__ import annotations

import pytest
import torch

from backbone.generate import LanguageModel
from backbone.state import ModelState
from backbone.tokenizer import ChatTokenizer
from memory.records import ChatMessage
from memory.transcript import PIECE_TOKENS, feed, message_pieces, replay
from tests.memory.chat import states_equal


@pytest.fixture(params=["kv-cache", "recurrent"])
def model(request: pytest.FixtureRequest, models: dict[str, tuple[LanguageModel, LanguageModel]]) -> LanguageModel:
    """Both kinds of state: the teacher's KV cache and the student's recurrent state."""
    return models[request.param][0]


def conversation() -> list[ChatMessage]:
    long_answer = " ".join(f"item {i} is {i * 7 % 13}," for i in range(400))  # well over one piece
    return [ChatMessage("user", "List the items."), ChatMessage("assistant", long_answer),
            ChatMessage("user", "Thanks. Which one is 12?"), ChatMessage("assistant", "Item 9 is 12.")]


def test_pieces_cover_the_rendered_message_in_order(tokenizer: ChatTokenizer) -> None:
    text = conversation()[1].text
    pieces = message_pieces(tokenizer, "assistant", text)
    assert len(pieces) > 1 and all(0 < len(p) <= PIECE_TOKENS for p in pieces)
    assert [t for p in pieces for t in p] == tokenizer.encode(tokenizer.render_turn("assistant", text))
    assert tokenizer.decode([t for p in pieces for t in p]) == f"<|im_start|>assistant\n{text}<|im_end|>\n"


def chat_template_ids(model: LanguageModel, messages: list[ChatMessage], system: str) -> list[int]:
    """The independent expectation: the whole conversation as the model's own chat template renders it."""
    turns = [{"role": "system", "content": system}] + [{"role": m.role, "content": m.text} for m in messages]
    return model.tokenizer.encode(model.tokenizer.render_chat(turns, add_generation_prompt=False))


def assert_states_close(a: ModelState, b: ModelState) -> None:
    ta, tb = a.to_tensors(), b.to_tensors()
    assert a.num_tokens == b.num_tokens and ta.keys() == tb.keys()
    for name in ta:
        assert torch.allclose(ta[name], tb[name], rtol=1e-4, atol=1e-5), name


def test_live_and_replayed_states_read_the_transcript_as_the_chat_template_renders_it(model: LanguageModel) -> None:
    """The live chat (a turn at a time) and replay (all at once) both hold what the model holds after
    reading the chat template's rendering of the conversation in one go; and the two are bit-identical."""
    messages = conversation()
    expected = model.new_state()
    ids = chat_template_ids(model, messages, "Be exact.")
    with torch.inference_mode():
        model.prefill(ids, expected)
    live = model.new_state()
    feed(model, live, [ChatMessage("system", "Be exact.")])
    for i in range(0, len(messages), 2):  # the chat engine feeds each finished turn
        feed(model, live, messages[i : i + 2])
    rebuilt, read = replay(model, messages, "Be exact.", progress=False)
    assert read == len(ids) > PIECE_TOKENS
    assert_states_close(live, expected)
    assert states_equal(rebuilt, live)  # the saved state is only a cache of this: not merely close
    _, read = replay(model, messages, None, progress=False)
    assert read == len(ids) - len(model.tokenizer.encode(model.tokenizer.render_turn("system", "Be exact.")))


def test_replay_continues_a_restored_state(model: LanguageModel) -> None:
    messages = conversation()
    head, _ = replay(model, messages[:2], "Be exact.", progress=False)
    restored = model.state_from_tensors(head.to_tensors(), head.metadata())
    continued, read = replay(model, messages[2:], state=restored, progress=False)
    full, _ = replay(model, messages, "Be exact.", progress=False)
    assert read == full.num_tokens - head.num_tokens
    assert states_equal(continued, full)
