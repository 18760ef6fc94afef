"""Plain values handed out by the session store, so callers never hold live database rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from backbone.state import ModelState

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatMessage:
    """One message of a transcript; `ordinal` and `created_at` are set once it is stored."""

    role: str
    text: str
    citations: list[dict[str, Any]] | None = None
    ordinal: int | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class Variants:
    """Every answer written at one place of a transcript (regenerated ones too), in the order written;
    `chosen` indexes the one the transcript, and so the session's state, holds."""

    ordinal: int
    answers: list[ChatMessage]
    chosen: int


@dataclass(frozen=True)
class SessionInfo:
    id: int
    title: str
    collection: str | None
    system_prompt: str | None
    model_fingerprint: str | None
    token_count: int
    version: int
    message_count: int
    parent_id: int | None
    branch_point: int | None
    created_at: datetime
    updated_at: datetime
    owner_id: int | None = None  # the user it belongs to, on a server with accounts


@dataclass(frozen=True)
class SnapshotInfo:
    """A stored state without its blob."""

    id: int
    ordinal: int
    model_fingerprint: str
    format_version: int
    codec: str
    dtype: str
    token_count: int
    byte_size: int
    created_at: datetime


@dataclass
class LoadedSession:
    """A session ready to chat: its transcript and the model state after the last message.

    `replayed_tokens` counts the transcript tokens re-read to build `state` (0 when a snapshot was
    current); `notice` says why, in words for the user, when that was more than a routine step.
    """

    info: SessionInfo
    messages: list[ChatMessage]
    state: ModelState
    replayed_tokens: int = 0
    notice: str | None = None
    restored_from: int | None = None  # ordinal of the snapshot used, None if none

    @property
    def version(self) -> int:
        return self.info.version
