"""The one definition of how a transcript becomes the model's token stream.

A saved state is only a cache: it must equal what re-reading the transcript gives. So the live chat
(after each answer, `feed(model, session_state, [user, assistant])`) and the rebuild path (`replay`)
go through the same functions here: each message is rendered with the model's chat format
(`tokenizer.render_turn(role, text)`), the system prompt, if the session has one, comes first, and the
tokens are fed in the same pieces (one call per message, split every `PIECE_TOKENS`). Same pieces in
the same calls make the rebuilt state bit-identical, not merely close.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from tqdm.auto import tqdm

from backbone.state import ModelState
from memory.records import ChatMessage

PIECE_TOKENS = 512


class ChatTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def render_turn(self, role: str, content: str) -> str: ...


class ChatModel(Protocol):
    """What the memory needs from a language model (backbone's `LanguageModel` has it all)."""

    tokenizer: ChatTokenizer
    fingerprint: str

    def new_state(self) -> ModelState: ...

    def state_from_tensors(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> ModelState: ...

    def prefill(self, ids: list[int], state: ModelState) -> torch.Tensor: ...


def message_pieces(tokenizer: ChatTokenizer, role: str, text: str) -> list[list[int]]:
    """The token pieces that one message is fed as, in order."""
    ids = tokenizer.encode(tokenizer.render_turn(role, text))
    return [ids[i : i + PIECE_TOKENS] for i in range(0, len(ids), PIECE_TOKENS)]


def with_system_prompt(messages: Sequence[ChatMessage], system_prompt: str | None) -> list[ChatMessage]:
    """The transcript as the model reads it from the start: system prompt first, when there is one."""
    head = [ChatMessage("system", system_prompt)] if system_prompt else []
    return head + list(messages)


def feed(model: ChatModel, state: ModelState, messages: Sequence[ChatMessage], *, progress: bool = False,
         desc: str = "Reading transcript") -> int:
    """Advance `state` over `messages` in place; return the number of tokens fed."""
    pieces = [p for m in messages for p in message_pieces(model.tokenizer, m.role, m.text)]
    total = sum(len(p) for p in pieces)
    with tqdm(total=total, unit="tok", desc=desc, disable=not progress or total == 0, leave=False) as bar:
        for piece in pieces:
            model.prefill(piece, state)
            bar.update(len(piece))
    return total


def replay(model: ChatModel, messages: Sequence[ChatMessage], system_prompt: str | None = None, *,
           state: ModelState | None = None, progress: bool = True) -> tuple[ModelState, int]:
    """Rebuild a state by re-reading a transcript; return it and the number of tokens read.

    Without `state`, start from the model's empty state and the system prompt. With `state` (restored
    from a snapshot, so it already holds the system prompt and the earlier messages), continue it in place
    over `messages`, which must be exactly the messages after that snapshot.
    """
    if state is None:
        state = model.new_state()
        messages = with_system_prompt(messages, system_prompt)
    fed = feed(model, state, messages, progress=progress, desc="Re-reading transcript")
    return state, fed
