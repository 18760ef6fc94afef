"""Text the page shows: chat messages with their sources, the status line, indexing progress and summary.

Pure functions of plain values, so they are tested without a browser.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from app.chat.events import TurnProgress
from app.chat.units import human_bytes

LANGUAGE_HINTS = {"python": "python", "markdown": "markdown", "javascript": "javascript", "typescript": "typescript",
                  "rust": "rust", "go": "go", "java": "java", "c": "c", "cpp": "cpp", "bash": "bash", "toml": "toml",
                  "yaml": "yaml", "json": "json", "sql": "sql", "html": "html", "css": "css"}
SNIPPET_CHARS = 4000
BEST_LINES = 24  # of the best passage, shown under the answer
INDENT = "\u00a0\u00a0"  # a branch of a branch in the sidebar (plain spaces would collapse in HTML)


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks inside the text."""
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def _label(c: dict[str, Any]) -> str:
    return html.escape(str(c.get("citation") or f"{c.get('path')}:{c.get('start_line')}-{c.get('end_line')}"))


def _code(c: dict[str, Any], max_lines: int | None = None) -> str:
    """The passage as a Markdown code block (cut at SNIPPET_CHARS, or after `max_lines` lines)."""
    text = str(c.get("text") or "").rstrip()
    lines = text.splitlines()
    if max_lines is not None and len(lines) > max_lines:
        text = "\n".join(lines[:max_lines]) + "\n…"
    if len(text) > SNIPPET_CHARS:
        text = text[:SNIPPET_CHARS] + "\n…"
    fence = _fence(text)
    lang = LANGUAGE_HINTS.get(str(c.get("language") or "").lower(), "")
    return f"{fence}{lang}\n{text}\n{fence}"


def citation_block(citations: Sequence[dict[str, Any]]) -> str:
    """What goes under an answer: the best passage's lines, in sight (the first `BEST_LINES` of them), then
    every source as `path:lines` expanding to its passage (HTML details + Markdown code)."""
    if not citations:
        return ""
    best = f"\n\n**Best match** <code>{_label(citations[0])}</code>\n\n{_code(citations[0], BEST_LINES)}"
    items = [f'<details class="rillet-source"><summary><code>{_label(c)}</code></summary>\n\n{_code(c)}\n\n'
             "</details>" for c in citations]
    return best + "\n\n**Sources**\n\n" + "\n".join(items)


def close_fences(text: str) -> str:
    """The text with a code block it leaves open (an answer cut short) closed, so what follows is not code."""
    opened = None
    for line in text.splitlines():
        stripped = line.strip()
        run = len(stripped) - len(stripped.lstrip("`"))
        if run >= 3 and (opened is None or (run >= len(opened) and stripped == "`" * run)):
            opened = "`" * run if opened is None else None
    return text if opened is None else f"{text.rstrip()}\n{opened}"


def chat_history(messages: Sequence[Any]) -> list[dict[str, str]]:
    """Stored messages (memory.records.ChatMessage) as the chat pane's messages."""
    history = []
    for m in messages:
        if m.role == "system":
            continue
        content = close_fences(m.text) + (citation_block(m.citations) if m.role == "assistant" and m.citations else "")
        history.append({"role": m.role, "content": content})
    return history


def status_line(model_label: str, device: str, tokens: int, state_bytes: int, max_context: int | None,
                note: str | None = None, turn: Any = None) -> str:
    """Model, device, session size and state size; with `turn` (an engine TurnResult), how fast the last
    answer came: time to its first token and tokens per second after it."""
    used = f"{tokens:,} tokens" + (f" of {max_context:,}" if max_context else "")
    line = f"**Model** {model_label} · **Device** {device} · **Session** {used} · **State** {human_bytes(state_bytes)}"
    if turn is not None and turn.first_token_s is not None:
        line += f" · **Last turn** first token {turn.first_token_s:.1f} s"
        if turn.tokens_per_s is not None:
            line += f", {turn.tokens_per_s:.1f} tokens/s"
    return line + (f"  \n⚠️ {note}" if note else "")


def session_label(info: Any) -> str:
    return f"{info.title} · {info.message_count} msg"


def branch_point(info: Any) -> str:
    """Where a branch left its parent, in turns: the turns it kept."""
    turns = (info.branch_point or 0) // 2
    return "from the start" if turns == 0 else f"from turn {turns}"


def session_tree(infos: Sequence[Any]) -> list[tuple[str, int]]:
    """The sidebar's (label, id) choices: each branch right under its parent, indented, saying which turn it
    left from. Sessions keep their order (most recent first) among their siblings; a branch whose parent is
    not listed stands at the top level."""
    listed = {info.id for info in infos}
    children: dict[int | None, list[Any]] = {}
    for info in infos:
        parent = info.parent_id if info.parent_id in listed else None
        children.setdefault(parent, []).append(info)
    choices: list[tuple[str, int]] = []

    def add(parent: int | None, depth: int) -> None:
        for info in children.get(parent, []):
            label = session_label(info)
            if info.parent_id is not None:
                label = f"{INDENT * (depth - 1)}↳ {label} · {branch_point(info)}"
            choices.append((label, info.id))
            add(info.id, depth + 1)

    add(None, 0)
    return choices


def answer_page(variants: Any, messages: Sequence[Any]) -> str:
    """"answer 1/2" when the last answer was regenerated ("" otherwise): which of its answers is shown."""
    if not messages or variants is None:
        return ""
    place = variants.get(messages[-1].ordinal)
    return "" if place is None else f"answer {place.chosen + 1}/{len(place.answers)}"


def progress_line(progress: Any) -> str:
    """One line for a retrieval `Progress` snapshot."""
    done, total = progress.files_done, max(progress.files_total, 1)
    width = 20
    filled = min(width, round(width * done / total)) if progress.files_total else 0
    bar = "█" * filled + "░" * (width - filled)
    eta = f", about {progress.eta_s:.0f} s left" if progress.eta_s is not None else ""
    return (f"`{bar}` {progress.stage}: {progress.files_done:,}/{progress.files_total:,} files, "
            f"{progress.chunks:,} chunks, {progress.embedded:,} embedded{eta}")


def index_summary(report: Any) -> str:
    """What an indexing run did, and what it skipped or could not read."""
    lines = [f"**Indexed `{report.collection}`** in {report.seconds:.1f} s: {report.files_total:,} files "
             f"({report.indexed:,} new or changed, {report.unchanged:,} unchanged, {report.removed:,} removed), "
             f"{report.chunks_total:,} chunks ({report.chunks_added:,} added, {report.chunks_removed:,} removed)."]
    if report.skipped:
        reasons = ", ".join(f"{n} {reason}" for reason, n in report.skip_reasons().most_common(5))
        lines.append(f"Skipped {len(report.skipped):,} files: {reasons}.")
    if report.failed:
        shown = "; ".join(f"`{path}`: {why}" for path, why in report.failed[:5])
        more = f" (and {len(report.failed) - 5} more)" if len(report.failed) > 5 else ""
        lines.append(f"Could not read {len(report.failed):,} files: {shown}{more}.")
    return "  \n".join(lines)


def answer_so_far(turn: TurnProgress) -> str:
    """The assistant's bubble while a turn runs: where it waits or what it reads, then the text so far."""
    if turn.stage == "waiting":
        return f"_Waiting for the model: {(turn.ahead or 0) + 1} turn(s) ahead of this one…_"
    if turn.stage == "reading" and turn.retrieved is not None and turn.retrieved.sources:
        return f"_Reading {len(turn.retrieved.sources)} passage(s)…_"
    return turn.text or "…"


def error_note(error: BaseException | str) -> str:
    return f"⚠️ {error}"
