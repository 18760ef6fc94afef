"""A one-off answer to a whole conversation sent at once (what OpenAI clients send): nothing is stored.

The messages are read into a fresh state in the order given, Rillet's system prompt first when the
conversation brings none; the last message must be the user's, and it is answered like a session turn:
passages of `collection` retrieved for it go into a system message just before it (app/chat/prompt.py).
It runs on the model queue like every other turn, and reports the same events (app/chat/events.py);
its `Finished` result is a `Completion`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.chat.events import Retrieved
from app.chat.generation import generation_steps, timed_pieces
from app.chat.prompt import DEFAULT_SYSTEM_PROMPT, Source, build_prompt
from app.chat.scheduler import Ticket
from memory.records import ChatMessage
from memory.text import clean_message

if TYPE_CHECKING:
    from app.engine import ChatEngine, TurnOptions

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Completion:
    answer: str
    citations: list[Source]
    stop_reason: str
    model: str
    prompt_tokens: int
    answer_tokens: int
    first_token_s: float | None
    seconds: float


def checked_conversation(engine: ChatEngine, messages: Sequence[ChatMessage], model: str | None
                         ) -> list[ChatMessage]:
    """The conversation as it will be read, or `TurnRefused` saying what is wrong with it."""
    from app.engine import TurnRefused

    if not messages:
        raise TurnRefused("`messages` is empty; send at least one user message.")
    for number, message in enumerate(messages, 1):
        if message.role not in ROLES:
            raise TurnRefused(f"Message {number} has the role {message.role!r}; Rillet reads only "
                              f"{', '.join(ROLES)} messages (it has no tool calling).")
    if messages[-1].role != "user":
        raise TurnRefused("The last message must be the user's: it is the one answered.")
    served = engine.served(model)
    last = engine.check_message(messages[-1].text, served)
    earlier = [ChatMessage(m.role, clean_message(m.text)[0]) for m in messages[:-1]]
    if not any(m.role == "system" for m in earlier):
        earlier.insert(0, ChatMessage("system", DEFAULT_SYSTEM_PROMPT))
    return [*earlier, ChatMessage("user", last)]


def complete(engine: ChatEngine, messages: Sequence[ChatMessage], options: TurnOptions,
             collection: str | None = None) -> Ticket:
    """Queue the answer to the conversation's last message; iterate the ticket for its events."""
    conversation = checked_conversation(engine, messages, options.model)
    if collection:
        engine.retrieval.get_collection(collection)  # a clear error for a name that does not exist
    served = engine.served(options.model)
    started = time.perf_counter()
    return engine.registry.scheduler.submit(
        lambda ticket: _answer(ticket, engine, conversation, options, served, collection, started))


def _answer(ticket: Ticket, engine: ChatEngine, conversation: list[ChatMessage], options: TurnOptions,
            served: Any, collection: str | None, started: float) -> Iterator[Any]:
    from app.engine import TurnRefused, search_query

    model = served.model
    tokenizer = model.tokenizer
    question = conversation[-1].text
    sources: list[Source] = []
    if collection and options.top_k:
        hits = engine.retrieval.search(collection, search_query(question, conversation[:-1]), k=options.top_k)
        sources = [Source(h.citation, h.path, h.start_line, h.end_line, h.text, h.score, h.language) for h in hits]
        yield None
    history = tokenizer.encode("".join(tokenizer.render_turn(m.role, m.text) for m in conversation[:-1]))
    room = None if model.max_context is None else model.max_context - len(history)
    budget = options.source_tokens
    prompt = build_prompt(tokenizer, question, sources, [], collection, budget)
    while room is not None and len(prompt.ids) + options.max_new_tokens > room and prompt.sources:
        budget //= 2  # make room: fewer passages before refusing
        prompt = build_prompt(tokenizer, question, sources if budget >= 64 else [], [], collection, max(budget, 64))
    ids = history + prompt.ids
    if room is not None and len(prompt.ids) + options.max_new_tokens > room:
        raise TurnRefused(f"This conversation is {len(ids):,} tokens long; with an answer of up to "
                          f"{options.max_new_tokens:,} tokens it does not fit the {served.name}'s "
                          f"{model.max_context:,}-token context. Send fewer or shorter messages, or lower max_tokens.")
    yield Retrieved(prompt.sources, [], len(ids))
    steps = generation_steps(model, ids, model.new_state(), options.sampling(), ticket, options.stop or None)
    answer, first_token_s = yield from timed_pieces(steps, started)
    return Completion(answer.text, prompt.sources, answer.stop_reason, served.label, len(ids),
                      answer.generated_tokens, first_token_s, time.perf_counter() - started)
