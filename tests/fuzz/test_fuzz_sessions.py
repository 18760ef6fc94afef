"""Property tests of the session store, the engine and the terminal, on SQLite and PostgreSQL: titles and
messages of any Unicode (controls, markup, bidi, lone surrogates), import documents of any shape, snapshot
bytes of any value. Each is stored exactly, or cleaned by the one rule (memory/text.py), or refused with an
error meant for the user; never a database error, a crash, or a transcript the state does not match."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from rich.console import Console

from app.terminal_text import line, text
from memory.codec import decode_state, sha256
from memory.db import make_engine
from memory.errors import InvalidTranscriptError, SnapshotError
from memory.limits import TITLE_MAX
from memory.records import ChatMessage
from memory.sessions import SessionStore
from memory.text import NOT_TEXT, clean_message, one_line
from tests.fuzz.strategies import import_documents, texts


@pytest.fixture
def store(db_url: str) -> Iterator[SessionStore]:
    engine = make_engine(db_url)
    yield SessionStore(engine)
    engine.dispose()


@given(title=texts, body=texts, rename=texts)
@example(title="[/x]\x00", body="a\x00b", rename="\u202eevil")
def test_titles_and_messages_are_stored_exactly_or_refused(store: SessionStore, title: str, body: str,
                                                           rename: str) -> None:
    cleaned = one_line(title)
    try:
        info = store.create(title)
    except InvalidTranscriptError:
        assert not cleaned or len(cleaned) > TITLE_MAX
        return
    assert info.title == cleaned and not NOT_TEXT.search(info.title) and "\n" not in info.title
    message = ChatMessage("user", body)
    try:
        store.append_messages(info.id, [message])
    except InvalidTranscriptError:
        assert NOT_TEXT.search(body)
    else:
        assert store.messages(info.id)[-1].text == body
    try:
        assert store.rename(info.id, rename).title == one_line(rename)
    except InvalidTranscriptError:
        assert not one_line(rename) or len(one_line(rename)) > TITLE_MAX
    exported = store.export_json(info.id)
    copy = store.import_json(json.dumps(exported))  # whatever was stored exports and imports back
    assert [m.text for m in store.messages(copy.id)] == [m.text for m in store.messages(info.id)]


@given(document=import_documents(), as_text=st.booleans())
def test_any_import_document_is_imported_within_limits_or_refused(store: SessionStore, document: Any,
                                                                  as_text: bool) -> None:
    data = json.dumps(document) if as_text else document
    try:
        info = store.import_json(data)
    except InvalidTranscriptError as exc:
        assert "import" in str(exc) or "title" in str(exc) or "contains the control character" in str(exc)
        return
    messages = store.messages(info.id)
    assert [m.role for m in messages] == [m["role"] for m in document["messages"]]
    assert all(m.role in ("user", "assistant") and not NOT_TEXT.search(m.text) for m in messages)
    assert info.system_prompt is None and info.message_count == len(document["messages"])


@given(blob=st.binary(max_size=300), codec=st.sampled_from(["safetensors", "safetensors+zstd", "other"]),
       manifest=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)))
def test_any_snapshot_bytes_are_a_state_or_a_snapshot_error(blob: bytes, codec: str, manifest: Any) -> None:
    with pytest.raises(SnapshotError):
        decode_state(blob, checksum=sha256(blob), codec=codec, format_version=1, manifest=manifest)


@given(value=texts)
def test_the_terminal_prints_any_text_as_it_is(value: str) -> None:
    out = io.StringIO()
    console = Console(file=out, width=300, color_system=None, force_terminal=False)
    console.print(f"[dim]title “{line(value)}” and[/dim] {text(value)}")  # never a MarkupError
    shown = out.getvalue()
    assert "\x1b" not in shown and "\r" not in shown
    assert "\n" not in shown.rstrip("\n").split(" and ")[0]  # a one-line field stays on one line


@pytest.fixture
def chat_engine(make_engine: Any, tiny: Any, db_url: str) -> Any:
    return make_engine(tiny, database_url=db_url)


@given(message=texts)
@example(message="where\x00 is [/x] the\x1b[31m config?\ud800")
def test_any_message_is_answered_and_stored_as_cleaned_or_refused(chat_engine: Any, message: str) -> None:
    from app.chat.scheduler import Finished
    from app.engine import TurnOptions, TurnRefused
    from memory.transcript import replay
    from tests.app.test_engine import assert_same_state, cached_state

    session = chat_engine.create_session("fuzz")
    try:
        ticket = chat_engine.ask(session.id, message, TurnOptions(max_new_tokens=3, top_k=0, recall_k=0))
    except TurnRefused:
        assert not clean_message(message)[0].strip()
        return
    final = list(ticket)[-1]
    assert isinstance(final, Finished), final
    stored = chat_engine.messages(session.id)
    assert stored[-2].text == clean_message(message)[0].strip() and not NOT_TEXT.search(stored[-1].text)
    rebuilt, _ = replay(chat_engine.served().model, stored, chat_engine.session(session.id).system_prompt,
                        progress=False)
    assert_same_state(cached_state(chat_engine, session.id), rebuilt)
