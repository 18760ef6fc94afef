"""What the page shows, as text: sources under answers, the status line, indexing progress and summary."""

from __future__ import annotations

import pytest

from app.chat.units import human_bytes
from memory.records import ChatMessage
from retrieval.indexer import IndexReport, Progress
from ui import render


def test_sources_expand_to_their_snippet_and_survive_backticks_and_html() -> None:
    tricky = "x = '```'\n<script>alert(1)</script>\n````\nend"
    block = render.citation_block([{"citation": "src/a<b>.py:3-9", "path": "src/a<b>.py", "text": tricky,
                                    "language": "python"}])
    assert "<summary><code>src/a&lt;b&gt;.py:3-9</code></summary>" in block
    fence = "`````"  # longer than the longest run of backticks inside (4)
    assert f"{fence}python\n{tricky}\n{fence}" in block
    assert render.citation_block([]) == ""


def test_the_best_source_is_shown_under_the_answer_and_every_source_listed() -> None:
    long = "\n".join(f"line {i}" for i in range(1, 41))
    block = render.citation_block([{"citation": "best.py:1-40", "text": long, "language": "python"},
                                   {"citation": "next.py:4-5", "text": "b"}])
    shown, listed = block.split("**Sources**")
    assert "**Best match** <code>best.py:1-40</code>" in shown
    assert f"line {render.BEST_LINES}\n…" in shown and f"line {render.BEST_LINES + 1}" not in shown
    assert "<summary><code>best.py:1-40</code></summary>" in listed and "line 40" in listed
    assert "<summary><code>next.py:4-5</code></summary>" in listed


@pytest.mark.parametrize(("text", "closed"), [
    ("Use it:\n```python\nx = 1", "Use it:\n```python\nx = 1\n```"),  # cut short inside code
    ("```\na\n```\nthen ````py\n", "```\na\n```\nthen ````py\n"),  # no fence opens a line: nothing to close
    ("````md\n```\nb", "````md\n```\nb\n````"),  # a shorter fence inside does not close it
    ("plain", "plain"),
])
def test_an_answer_cut_inside_a_code_block_gets_it_closed(text: str, closed: str) -> None:
    assert render.close_fences(text) == closed


def test_chat_history_shows_user_and_assistant_turns_with_sources() -> None:
    messages = [ChatMessage("system", "be brief"), ChatMessage("user", "where?"),
                ChatMessage("assistant", "here", [{"citation": "a.py:1-2", "text": "pass"}]),
                ChatMessage("assistant", "no sources")]
    history = render.chat_history(messages)
    assert [m["role"] for m in history] == ["user", "assistant", "assistant"]
    assert history[1]["content"].startswith("here\n\n**Best match** <code>a.py:1-2</code>")
    assert "**Sources**" in history[1]["content"]
    assert history[2]["content"] == "no sources"


def test_status_line_and_sizes() -> None:
    line = render.status_line("teacher (instead of student)", "cpu", 1234, 3 * 1024 * 1024, 8192, "not trained")
    assert "teacher (instead of student)" in line and "1,234 tokens of 8,192" in line and "3.0 MB" in line
    assert "not trained" in line
    assert "of" not in render.status_line("student", "cuda", 5, 10, None).split("**Session**")[1].split("·")[0]
    assert [human_bytes(n) for n in (0, 1023, 1536, 5 * 1024**3)] == ["0 B", "1023 B", "1.5 KB", "5.0 GB"]


def test_progress_and_summary() -> None:
    progress = Progress(stage="index", files_done=5, files_total=10, chunks=40, embedded=30, elapsed_s=3.0, eta_s=12.4)
    line = render.progress_line(progress)
    assert "█" * 10 + "░" * 10 in line and "5/10 files" in line and "about 12 s left" in line
    report = IndexReport(collection="docs", seconds=3.25, files_total=12, indexed=10, unchanged=1, removed=1,
                         chunks_total=50, chunks_added=48, chunks_removed=2, failed=[("bad.pdf", "damaged")],
                         skipped=[("a.bin", "binary"), ("b.bin", "binary"), ("big.txt", "too large (3 MB)")])
    summary = render.index_summary(report)
    assert "**Indexed `docs`** in 3.2 s: 12 files" in summary
    assert "Skipped 3 files: 2 binary, 1 too large." in summary and "`bad.pdf`: damaged" in summary


def test_the_answer_bubble_says_where_the_turn_is() -> None:
    from app.chat.events import Piece, Retrieved, TurnProgress, Waiting
    from app.chat.prompt import Source

    turn = TurnProgress()
    bubbles = []
    source = Source("a.py:1-2", "a.py", 1, 2, "x = 1", 0.5, "python")
    events = (Waiting(0), Retrieved([], [], 10), Retrieved([source, source], [], 10), Piece("Two"), Piece(" words"))
    for event in events:
        turn.add(event)
        bubbles.append(render.answer_so_far(turn))
    assert bubbles == ["_Waiting for the model: 1 turn(s) ahead of this one…_", "…", "_Reading 2 passage(s)…_", "Two",
                       "Two words"]


def test_branches_are_listed_under_their_parent_with_the_turn_they_left_from() -> None:
    from datetime import UTC, datetime

    from memory.records import SessionInfo

    def info(id_: int, title: str, parent: int | None = None, point: int | None = None) -> SessionInfo:
        now = datetime.now(UTC)
        return SessionInfo(id_, title, None, None, None, 0, 0, 4, parent, point, now, now)

    # most recent first, as the store lists them: the branches are newer than their parents
    listed = [info(4, "deeper", 3, 2), info(3, "edited", 1, 0), info(2, "other"), info(5, "orphan", 99, 4),
              info(1, "first")]
    assert render.session_tree(listed) == [
        ("other · 4 msg", 2), ("↳ orphan · 4 msg · from turn 2", 5), ("first · 4 msg", 1),
        ("↳ edited · 4 msg · from the start", 3), (f"{render.INDENT}↳ deeper · 4 msg · from turn 1", 4)]


def test_the_status_line_shows_the_last_turns_speed_and_the_pager_which_answer() -> None:
    from types import SimpleNamespace

    from memory.records import Variants

    turn = SimpleNamespace(first_token_s=1.25, tokens_per_s=48.04)
    line = render.status_line("student", "cpu, int8", 1200, 9 << 20, 8192, turn=turn)
    assert "**State** 9.0 MB" in line and "**Last turn** first token 1.2 s, 48.0 tokens/s" in line
    assert "Last turn" not in render.status_line("student", "cpu", 0, 0, None)
    messages = [ChatMessage("user", "q", ordinal=0), ChatMessage("assistant", "b", ordinal=1)]
    answers = [ChatMessage("assistant", "a"), ChatMessage("assistant", "b"), ChatMessage("assistant", "c")]
    assert render.answer_page({1: Variants(1, answers, 1)}, messages) == "answer 2/3"
    assert render.answer_page({}, messages) == "" and render.answer_page({1: Variants(1, answers, 0)}, []) == ""
