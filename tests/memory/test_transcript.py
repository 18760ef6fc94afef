"""The transcript -> token stream definition: what the live chat feeds is exactly what replay feeds."""

from __future__ import annotations

import pytest

from backbone.generate import LanguageModel
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


def test_replay_rebuilds_the_live_state_bit_for_bit(model: LanguageModel) -> None:
    messages = conversation()
    live = model.new_state()
    feed(model, live, [ChatMessage("system", "Be exact.")])
    for i in range(0, len(messages), 2):  # the chat engine feeds each finished turn
        feed(model, live, messages[i : i + 2])
    rebuilt, read = replay(model, messages, "Be exact.", progress=False)
    assert read == live.num_tokens > PIECE_TOKENS
    assert states_equal(rebuilt, live)
    without_prompt, _ = replay(model, messages, None, progress=False)
    assert without_prompt.num_tokens < live.num_tokens


def test_replay_continues_a_restored_state(model: LanguageModel) -> None:
    messages = conversation()
    head, _ = replay(model, messages[:2], "Be exact.", progress=False)
    restored = model.state_from_tensors(head.to_tensors(), head.metadata())
    continued, read = replay(model, messages[2:], state=restored, progress=False)
    full, _ = replay(model, messages, "Be exact.", progress=False)
    assert read == full.num_tokens - head.num_tokens
    assert states_equal(continued, full)
