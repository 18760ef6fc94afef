"""LangChain's chat history over the session tables, sync and async, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from app.langchain_history import SqlChatMessageHistory
from memory.db import make_engine
from memory.errors import SessionNotFoundError
from memory.sessions import SessionStore


@pytest.fixture
def store(db_url: str) -> Iterator[SessionStore]:
    engine = make_engine(db_url)
    yield SessionStore(engine)
    engine.dispose()


CONVERSATION = [SystemMessage(content="Answer in French."), HumanMessage(content="Hello"),
                AIMessage(content="Bonjour", additional_kwargs={"citations": [{"path": "a.py"}]}),
                HumanMessage(content="Thanks")]


def test_messages_round_trip_into_the_session_transcript(store: SessionStore) -> None:
    session_id = store.create("from langchain").id
    history = SqlChatMessageHistory(store, str(session_id))
    history.add_messages(CONVERSATION[:2])
    history.add_message(CONVERSATION[2])
    history.add_user_message("Thanks")
    assert history.messages == CONVERSATION
    assert [(m.role, m.text) for m in store.messages(session_id)] == [
        ("system", "Answer in French."), ("user", "Hello"), ("assistant", "Bonjour"), ("user", "Thanks")]
    assert store.messages(session_id)[2].citations == [{"path": "a.py"}]
    assert SqlChatMessageHistory(store, session_id).messages == CONVERSATION  # another reader sees them
    history.clear()
    assert history.messages == [] and store.get(session_id).message_count == 0


async def test_async_methods(store: SessionStore) -> None:
    history = SqlChatMessageHistory(store, store.create("async").id)
    await history.aadd_messages(CONVERSATION)
    assert await history.aget_messages() == CONVERSATION
    await history.aclear()
    assert await history.aget_messages() == []


def test_unsupported_messages_are_refused_and_nothing_is_written(store: SessionStore) -> None:
    history = SqlChatMessageHistory(store, store.create("strict").id)
    with pytest.raises(ValueError, match="ToolMessage"):
        history.add_messages([HumanMessage(content="ok"), ToolMessage(content="x", tool_call_id="1")])
    with pytest.raises(ValueError, match="text"):
        history.add_messages([HumanMessage(content=[{"type": "image_url", "image_url": {"url": "x"}}])])
    assert history.messages == []
    with pytest.raises(SessionNotFoundError):
        SqlChatMessageHistory(store, 987654)
