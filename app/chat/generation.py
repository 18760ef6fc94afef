"""Generation as scheduler steps: a long prefill is cut into slices and each answer token is one step,
so the queue can interleave users; cancellation and stop sequences end an answer cleanly.
"""

from __future__ import annotations

import re
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.chat.events import Piece
from app.chat.scheduler import Ticket

PREFILL_SLICE = 256  # tokens per scheduler step while reading a prompt


SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def cut_to_sentence(text: str) -> str:
    """The text up to the end of its last whole sentence or line (all of it when it has neither): an
    answer ended by the loop stop would otherwise stop mid-sentence, where the repeat began."""
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    return text[: ends[-1]].rstrip() if ends and text[: ends[-1]].strip() else text


@dataclass
class Answer:
    text: str = ""
    prompt_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    stop_reason: str = "max_new_tokens"  # also: end_of_turn, context_full, repetition, stop_sequence, cancelled

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids)


class StopMatcher:
    """Cuts streamed text at the first stop sequence, holding back only what could begin one."""

    def __init__(self, stops: Sequence[str] | None) -> None:
        self.stops = [s for s in stops or () if s]
        self.pending = ""
        self.matched = False

    def push(self, text: str) -> str:
        """The text that is safe to show now."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.matched = self.pending[: min(hits)], "", True
            return out
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def generation_steps(model: Any, prompt_ids: list[int], state: Any, sampling: Any, ticket: Ticket,
                     stops: Sequence[str] | None = None) -> Iterator[Piece]:
    """Read `prompt_ids` into `state` and generate; one yield per scheduler step; returns the `Answer`.

    The state ends holding the prompt and every generated token (like `LanguageModel.stream`). A
    cancelled ticket ends the answer after the current step, keeping what was generated. When the loop
    stop ends it (`SamplingConfig.loop_stop`), the start of the repeat is never streamed, and the
    answer returned is cut back to its last whole sentence or line (`cut_to_sentence`); the page shows
    the stored answer once it is finished.
    """
    from backbone.generate import AnswerText

    if not prompt_ids:
        raise ValueError("Nothing to answer: the prompt is empty.")
    answer = Answer(prompt_tokens=len(prompt_ids))
    head, tail = prompt_ids[:-1], prompt_ids[-1:]
    for start in range(0, len(head), PREFILL_SLICE):
        if ticket.cancelled:
            answer.stop_reason = "cancelled"
            return answer
        model.prefill(head[start : start + PREFILL_SLICE], state)
        yield Piece("")
    text = AnswerText(model.tokenizer.token_bytes, model.tokenizer.stop_ids, sampling.loop_stop)
    matcher = StopMatcher(stops)
    tokens = model.iter_tokens(tail, state, sampling)
    while True:
        if ticket.cancelled:
            answer.stop_reason = "cancelled"
            break
        try:
            token = next(tokens)
        except StopIteration as stop:
            answer.stop_reason = stop.value or "max_new_tokens"
            break
        answer.token_ids.append(token)
        shown = matcher.push(text.push(token))
        answer.text += shown
        if matcher.matched:
            answer.stop_reason = "stop_sequence"
            tokens.close()
            break
        yield Piece(shown)
    if not matcher.matched:
        rest = matcher.push(text.finish(answer.stop_reason))
        rest += "" if matcher.matched else matcher.flush()
        if rest:
            answer.text += rest
            yield Piece(rest)
    if answer.stop_reason == "repetition":  # the final text (what is stored) ends at a sentence's end
        answer.text = cut_to_sentence(answer.text)
    return answer


def timed_pieces(steps: Iterator[Piece], started: float
                 ) -> Generator[Piece, None, tuple[Answer, float | None]]:
    """Pass `steps` through; returns its `Answer` and when the first text came (seconds after `started`,
    a `time.perf_counter()` reading), None when no text came."""
    first_token_s = None
    while True:
        try:
            piece = next(steps)
        except StopIteration as stop:
            return stop.value, first_token_s
        if piece.text and first_token_s is None:
            first_token_s = time.perf_counter() - started
        yield piece
