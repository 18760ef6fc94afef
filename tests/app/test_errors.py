"""Honest errors: a `UserError` is shown as it is; any other exception is a bug, logged with its traceback
and shown as an internal error, never as advice. Through the web page's handlers, on the tiny model."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pytest

from app.engine import TurnRefused

QUESTION = "Where is the kettle's boiling point set?"
INTERNAL = "⚠️ Internal error (KeyError), see the log. Your message is back in the box; try again."


def ask_on_the_page(engine: Any, session_id: int) -> Any:
    """The web page's handler for Send; its last output (`ui.app.Answering`)."""
    from ui.app import Page

    return list(Page(engine).respond(QUESTION, session_id, "", [], 0, 0.0, 8, "teacher"))[-1]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return ["".join(traceback.format_exception(*r.exc_info)) for r in caplog.records if r.exc_info]


def test_a_bug_in_a_turn_is_logged_with_its_traceback_and_shown_as_an_internal_error(
        make_engine: Any, tiny: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(tiny)
    session = engine.create_session()

    def retrieve_with_a_bug(*args: Any, **kwargs: Any) -> Any:
        return {}["the passages of a collection that was never loaded"]

    monkeypatch.setattr(engine, "_retrieve", retrieve_with_a_bug)
    with caplog.at_level(logging.INFO):
        shown = ask_on_the_page(engine, session.id)
    assert shown.notice == INTERNAL and "never loaded" not in shown.notice  # the bug's own words are for the log
    assert shown.message == QUESTION  # given back to send again
    (logged,) = tracebacks(caplog)
    assert "retrieve_with_a_bug" in logged and "KeyError: 'the passages of a collection that was never loaded'" \
        in logged
    assert engine.messages(session.id) == []  # nothing of the turn was stored


def test_a_user_error_in_a_turn_is_shown_as_it_is_and_not_logged_as_a_bug(
        make_engine: Any, tiny: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(tiny)
    session = engine.create_session()
    advice = "This session searches the collection 'kettle', which was deleted. Pick another collection for it."

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise TurnRefused(advice)

    monkeypatch.setattr(engine, "_retrieve", refuse)
    with caplog.at_level(logging.INFO):
        shown = ask_on_the_page(engine, session.id)
    assert shown.notice == f"⚠️ {advice}" and shown.message == QUESTION
    assert tracebacks(caplog) == []


def test_a_bug_in_a_page_handler_is_logged_and_shown_as_an_internal_error(
        make_engine: Any, tiny: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from ui.app import Page

    engine = make_engine(tiny)
    session = engine.create_session()
    page = Page(engine)
    assert page.rename(session.id, " ")[1].startswith("⚠️ A session title cannot be empty")  # advice, as is

    def rename_with_a_bug(session_id: int, title: str) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'title'")

    monkeypatch.setattr(engine, "rename_session", rename_with_a_bug)
    with caplog.at_level(logging.INFO):
        _, notice = page.rename(session.id, "Kettles")
    assert notice == "⚠️ Internal error (AttributeError), see the log."
    (logged,) = tracebacks(caplog)
    assert "rename_with_a_bug" in logged
