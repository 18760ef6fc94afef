"""Hostile input through the engine and the terminal, on SQLite and PostgreSQL: control characters in
messages and titles, a database that refuses a turn, markup and line breaks in what the terminal prints."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import text

from app.chat.scheduler import Failed
from app.engine import ChatEngine, TurnNotSaved
from memory.db import make_engine as make_db
from memory.transcript import replay
from tests.app.test_engine import SHORT, assert_same_state, cached_state, run_turn


@pytest.fixture
def engine(make_engine: Any, tiny: Any, db_url: str) -> ChatEngine:
    return make_engine(tiny, database_url=db_url)


def test_nul_and_control_characters_in_a_message_are_removed_and_the_user_told(engine: ChatEngine) -> None:
    session = engine.create_session()
    _, result = run_turn(engine, session.id, "where\x00 is the\x1b[31m config\x7f?")
    assert result.message == "where is the[31m config?"
    assert "3 control characters (U+0000, U+001B, U+007F) removed from your message" in (result.notice or "")
    stored = engine.messages(session.id)
    assert [m.text for m in stored[-2:]] == [result.message, result.answer]
    rebuilt, _ = replay(engine.served().model, stored, engine.session(session.id).system_prompt, progress=False)
    assert_same_state(cached_state(engine, session.id), rebuilt)  # the state read what was stored


def test_control_characters_in_a_title_are_removed(engine: ChatEngine) -> None:
    session = engine.create_session("a\x00b\nc\x1b")
    assert session.title == "ab c"
    assert engine.rename_session(session.id, "[/x]\x00 \u202eevil\u202c").title == "[/x] \u202eevil\u202c"


def _refuse_messages(url: str, on: bool) -> None:
    """A trigger that makes the database itself refuse every new message (a real database error)."""
    db = make_db(url)
    with db.begin() as conn:
        if url.startswith("sqlite"):
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_messages"))
            if on:
                conn.execute(text("CREATE TRIGGER refuse_messages BEFORE INSERT ON messages "
                                  "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_messages ON messages"))
            if on:
                conn.execute(text("CREATE OR REPLACE FUNCTION refuse_message() RETURNS trigger AS $$ BEGIN "
                                  "RAISE EXCEPTION 'refused by the test trigger'; END $$ LANGUAGE plpgsql"))
                conn.execute(text("CREATE TRIGGER refuse_messages BEFORE INSERT ON messages "
                                  "FOR EACH ROW EXECUTE FUNCTION refuse_message()"))
    db.dispose()


def test_a_turn_the_database_refuses_is_a_clear_error_and_nothing_is_kept(engine: ChatEngine, db_url: str) -> None:
    session = engine.create_session()
    run_turn(engine, session.id, "first question")
    before = engine.messages(session.id)
    _refuse_messages(db_url, True)
    try:
        events = list(engine.ask(session.id, "second question", SHORT))
    finally:
        _refuse_messages(db_url, False)
    failed = events[-1]
    assert isinstance(failed, Failed) and isinstance(failed.error, TurnNotSaved), events[-1]
    message = str(failed.error)
    assert "could not be saved" in message and "refused by the test trigger" in message
    assert "INSERT" not in message and "Nothing of this turn was stored" in message
    assert engine.messages(session.id) == before

    _, result = run_turn(engine, session.id, "second question")  # the session goes on from where it was
    stored = engine.messages(session.id)
    assert [m.text for m in stored[-2:]] == ["second question", result.answer] and len(stored) == len(before) + 2
    rebuilt, _ = replay(engine.served().model, stored, engine.session(session.id).system_prompt, progress=False)
    assert_same_state(cached_state(engine, session.id), rebuilt)


def _terminal(engine: ChatEngine, monkeypatch: pytest.MonkeyPatch, lines: list[str], **kwargs: Any) -> str:
    """`rillet chat` on this engine, typing `lines`; what the terminal showed."""
    import app.engine
    from app.chat import terminal

    monkeypatch.setattr(app.engine, "ChatEngine", lambda settings: engine)
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False, color_system=None)
    typed = iter(lines)

    def type_line(prompt: str = "", **_: Any) -> str:
        console.print(prompt, end="")
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(console, "input", type_line)
    options = {"max_new_tokens": 6, "top_k": 0}
    code = terminal.run(engine.settings, console, model=None, collection=None, options=options,
                        **{"session_id": None, **kwargs})
    return f"exit {code}\n" + out.getvalue()


def test_the_terminal_never_says_a_session_was_saved_when_the_turn_was_not(
        engine: ChatEngine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse_messages(db_url, True)
    try:
        shown = _terminal(engine, monkeypatch, ["a question"])
    finally:
        _refuse_messages(db_url, False)
    assert "could not be saved" in shown
    assert "saved;" not in shown and "not saved" in shown


def test_markup_and_control_characters_from_users_are_printed_as_they_are(engine: ChatEngine,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from memory.records import ChatMessage

    session = engine.create_session("[/x] [bold]title")
    engine.store.append_messages(session.id, [ChatMessage("user", "[/x] hello [red]\nsecond line"),
                                              ChatMessage("assistant", "an [/] answer")])
    shown = _terminal(engine, monkeypatch, ["[/x] a [red]question"], session_id=session.id)
    assert "exit 0" in shown, shown
    assert "“[/x] [bold]title”" in shown and "you> [/x] hello [red]\nsecond line" in shown
    assert "rillet> an [/] answer" in shown
    assert engine.messages(session.id)[-2].text == "[/x] a [red]question"


def _damage_newest_snapshot(engine: ChatEngine, session_id: int) -> None:
    from sqlalchemy import update

    from memory.models import StateSnapshot

    newest = engine.store.snapshots(session_id)[-1]
    with engine.store.engine.begin() as conn:
        conn.execute(update(StateSnapshot).where(StateSnapshot.id == newest.id).values(checksum="0" * 64))


@pytest.mark.parametrize("where", ["page", "terminal", "turn"])
def test_a_repaired_snapshot_is_told_to_the_user(make_engine: Any, tiny: Any, db_url: str, where: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_engine(tiny, database_url=db_url)
    session = first.create_session("repair me")
    run_turn(first, session.id, "remember the kettle")
    _damage_newest_snapshot(first, session.id)
    engine = make_engine(tiny, database_url=db_url)  # the app restarted: no state in memory
    said = "The saved memory of this session could not be used (checksum mismatch"
    if where == "page":
        from ui.app import Page

        assert said in Page(engine).open_session(session.id, "")[4]
    elif where == "terminal":
        assert said in _terminal(engine, monkeypatch, [], session_id=session.id)
    else:
        _, result = run_turn(engine, session.id, "and now?")
        assert said in (result.notice or "")
    assert engine.store.load(session.id, tiny, progress=False).notice is None  # repaired once, for good


def test_a_session_id_out_of_range_is_refused_cleanly(engine: ChatEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    shown = _terminal(engine, monkeypatch, [], session_id=2**63)
    assert "exit 2" in shown and "Session 9223372036854775808 does not exist" in shown


@pytest.mark.parametrize("name", ["a\x00b", "half\ud800", "x" * 5_000, "new\nline"])
def test_hostile_collection_names_are_refused_clearly(engine: ChatEngine, name: str) -> None:
    from retrieval.service import CollectionNotFoundError

    with pytest.raises(CollectionNotFoundError, match="No collection named"):
        engine.create_session(collection=name)
    with pytest.raises(ValueError, match="collection"):
        engine.index_folder(str(engine.settings.allowed_roots[0]), name)
    assert engine.list_collections() == []


def test_documents_no_database_can_store_are_refused_clearly(engine: ChatEngine) -> None:
    engine.retrieval.create_collection("docs")
    for document in [(None, "nul\x00inside", None), ("id\x00", "text", None), ("x", "half\udcff", None)]:
        with pytest.raises(ValueError, match="NUL or half a character"):
            engine.retrieval.add_documents("docs", [document])
    assert engine.retrieval.add_documents("docs", [("ok", "fine text", {"k": "\x00 in metadata is JSON"})]) == ["ok"]
