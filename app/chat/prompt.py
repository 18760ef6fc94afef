"""What the model reads for one answer: retrieved passages, recalled turns and the question.

Passages and recollections go only into the turn's fork of the session state (see app/engine.py); the
persistent state reads the plain user message. Passages are packed best first into a token budget; one that does not
fit whole is cut at a line boundary so the reader still gets the start of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_SYSTEM_PROMPT = (
    "You are Rillet, a helpful assistant for questions about code and documents. "
    "Answer briefly and accurately, using the sources you are given when they help."
)


@dataclass(frozen=True)
class PromptLayout:
    """How the passages are laid out for the model; bench/answers.py measures the choices.

    `header` is formatted with number, citation, path, start and end; `best_last` puts the most relevant
    passage nearest the question (which passages fit the budget is decided best first either way);
    `instruction`, when set, is said after the passages, just before the question.
    """

    header: str = "[{number}] {citation}"
    best_last: bool = False
    instruction: str = ""


DEFAULT_LAYOUT = PromptLayout()


@dataclass(frozen=True)
class Source:
    """One retrieved passage as the prompt and the citation list see it."""

    citation: str  # `path:start-end` (retrieval's format, with #page= for paged documents)
    path: str
    start_line: int
    end_line: int
    text: str
    score: float
    language: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"citation": self.citation, "path": self.path, "start_line": self.start_line,
                "end_line": self.end_line, "score": round(self.score, 4), "text": self.text,
                "language": self.language}


@dataclass(frozen=True)
class Recollection:
    """An earlier passage of this conversation, found by the session's recall index."""

    role: str
    text: str


@dataclass(frozen=True)
class TurnPrompt:
    ids: list[int]
    sources: list[Source]  # the passages that made it into the prompt
    source_tokens: int


def _cut(tokenizer: object, text: str, budget: int) -> str:
    """The longest run of whole lines of `text` within `budget` tokens (at least one line's start)."""
    lines, kept, used = text.splitlines(keepends=True), [], 0
    for line in lines:
        n = len(tokenizer.encode(line))
        if used + n > budget:
            if not kept:  # a single long line: keep its first `budget` tokens
                return tokenizer.decode(tokenizer.encode(line)[:budget])
            break
        kept.append(line)
        used += n
    return "".join(kept)


def passage_header(layout: PromptLayout, number: int, source: Source) -> str:
    return layout.header.format(number=number, citation=source.citation, path=source.path, start=source.start_line,
                                end=source.end_line)


def pack_sources(tokenizer: object, sources: Sequence[Source], budget: int, layout: PromptLayout = DEFAULT_LAYOUT
                 ) -> tuple[list[tuple[Source, str]], int]:
    """Best-first (passage, text to show) pairs within `budget` tokens, headers included; the last may be cut.

    A cut passage is still cited whole: the reader can open all of it under the answer.
    """
    packed, used = [], 0
    for number, source in enumerate(sources, 1):
        header = passage_header(layout, number, source) + "\n"
        room = budget - used - len(tokenizer.encode(header)) - 2
        if room < 16:
            break
        text = source.text if len(tokenizer.encode(source.text)) <= room else _cut(tokenizer, source.text, room)
        if not text.strip():
            break
        packed.append((source, text))
        used += len(tokenizer.encode(header + text + "\n\n"))
    return packed, used


def context_message(passages: Sequence[tuple[Source, str]], recalled: Sequence[Recollection],
                    collection: str | None, layout: PromptLayout = DEFAULT_LAYOUT) -> str | None:
    """The system message read just before the question, or None when there is no context."""
    parts = []
    if passages:
        where = f' "{collection}"' if collection else ""
        blocks = [f"{passage_header(layout, i, s)}\n{text.rstrip()}" for i, (s, text) in enumerate(passages, 1)]
        if layout.best_last:
            blocks.reverse()
        parts.append(f"Sources for the next question, from the collection{where}:\n\n" + "\n\n".join(blocks))
    if recalled:
        said = "\n".join(f"- {'The user' if r.role == 'user' else 'You'} said: {r.text}" for r in recalled)
        parts.append(f"Earlier in this conversation:\n{said}")
    if parts and layout.instruction:
        parts.append(layout.instruction)
    return "\n\n".join(parts) or None


def build_prompt(tokenizer: object, message: str, sources: Sequence[Source], recalled: Sequence[Recollection],
                 collection: str | None, source_budget: int, layout: PromptLayout = DEFAULT_LAYOUT) -> TurnPrompt:
    """Token ids that continue a session state (which ends after a whole message) with this turn.

    The context is a system message of its own, followed by the user's message exactly as the
    persistent state will read it. (With the context inside the user message instead, the teacher more
    often repeated its previous answer; as a separate system message it answered 4 of 4 fixture
    questions right, against 3 of 4.)
    """
    packed, used = pack_sources(tokenizer, sources, source_budget, layout)
    context = context_message(packed, recalled, collection, layout)
    text = (tokenizer.render_turn("system", context) if context else "") + tokenizer.render_turn("user", message)
    return TurnPrompt(tokenizer.encode(text + tokenizer.assistant_prefix), [s for s, _ in packed], used)
