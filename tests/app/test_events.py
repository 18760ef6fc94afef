"""The one fold over a turn's events that every front end reads (app/chat/events.py)."""

from __future__ import annotations

import pytest

from app.chat.events import Cancelled, Failed, Finished, Piece, Retrieved, Started, TurnProgress, Waiting, follow


def test_a_turn_folds_into_stages_text_and_result() -> None:
    retrieved = Retrieved([], [], 42)
    events = [Waiting(2), Waiting(1), Started(), retrieved, Piece("Hel"), Piece(""), Piece("lo"), Finished("result")]
    seen = [(p.stage, p.ahead, p.text, p.delta, p.done) for p in follow(events)]
    assert seen == [("waiting", 2, "", "", False), ("waiting", 1, "", "", False), ("reading", 1, "", "", False),
                    ("answering", 1, "Hel", "Hel", False), ("answering", 1, "Hello", "lo", False),
                    ("finished", 1, "Hello", "", True)]
    progress = TurnProgress()
    for event in events:
        progress.add(event)
    assert (progress.retrieved, progress.result, progress.error, progress.events) == (retrieved, "result", None, 8)


def test_failed_and_cancelled_end_the_turn() -> None:
    error = KeyError("bug")
    (*_, failed) = follow([Started(), Piece("par"), Failed(error)])
    assert (failed.stage, failed.error, failed.text, failed.done) == ("failed", error, "par", True)
    (cancelled,) = follow([Cancelled()])
    assert (cancelled.stage, cancelled.done, cancelled.result) == ("cancelled", True, None)


def test_anything_else_is_not_a_turn_event() -> None:
    with pytest.raises(TypeError, match="not a turn event"):
        TurnProgress().add("Hello")
