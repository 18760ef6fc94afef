"""LangChain's chat-history interface over Rillet's own session tables.

Messages written here are ordinary transcript messages: the chat UI shows them, and the next time the
session is loaded the model state catches up by reading them. The session's system prompt is part of
the session, not of this history (LangChain keeps system prompts in its prompt templates).
The async methods run the database work in a worker thread (BaseChatMessageHistory's default), so an
event loop is never blocked, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from memory.records import ChatMessage
from memory.sessions import SessionStore

TO_ROLE = {HumanMessage: "user", AIMessage: "assistant", SystemMessage: "system"}


def _to_chat(message: BaseMessage) -> ChatMessage:
    role = TO_ROLE.get(type(message))
    if role is None:
        raise ValueError(f"Rillet sessions store human, AI and system messages, not {type(message).__name__}.")
    if not isinstance(message.content, str):
        raise ValueError("Rillet sessions store text messages; this one has structured content. Pass its text.")
    return ChatMessage(role, message.content, message.additional_kwargs.get("citations"))


def _to_langchain(message: ChatMessage) -> BaseMessage:
    if message.role == "assistant":
        extra = {"citations": message.citations} if message.citations else {}
        return AIMessage(content=message.text, additional_kwargs=extra)
    return (HumanMessage if message.role == "user" else SystemMessage)(content=message.text)


class SqlChatMessageHistory(BaseChatMessageHistory):
    """The transcript of one stored session, as LangChain messages (`citations` ride in additional_kwargs)."""

    def __init__(self, store: SessionStore, session_id: int | str) -> None:
        super().__init__()
        self.store, self.session_id = store, int(session_id)
        self.store.get(self.session_id)  # a clear error now rather than at first use

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return [_to_langchain(m) for m in self.store.messages(self.session_id)]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        self.store.append_messages(self.session_id, [_to_chat(m) for m in messages])

    def clear(self) -> None:
        self.store.clear(self.session_id)
