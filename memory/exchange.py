"""Sessions as files people keep: Markdown to read, JSON to move between installations."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from memory.errors import InvalidTranscriptError
from memory.limits import (
    COLLECTION_NAME_MAX,
    MAX_ANSWER_CHARS,
    MAX_CITATION_CHARS,
    MAX_CITATIONS,
    MAX_IMPORT_BYTES,
    MAX_IMPORT_MESSAGES,
    MAX_MESSAGE_CHARS,
)
from memory.records import ChatMessage, SessionInfo
from memory.text import NOT_IN_NAMES, check_text, codepoint

EXPORT_FORMAT = "rillet-session"
EXPORT_VERSION = 1
SPEAKERS = {"system": "System", "user": "You", "assistant": "Assistant"}


class ExportedMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    text: str
    citations: list[dict[str, Any]] | None = None
    created_at: datetime | None = None


class ExportedSession(BaseModel):
    format: Literal["rillet-session"]
    version: Literal[1]
    title: str
    collection: str | None = None
    system_prompt: str | None = None
    created_at: datetime | None = None
    messages: list[ExportedMessage]


def to_json(info: SessionInfo, messages: list[ChatMessage]) -> dict[str, Any]:
    """A JSON-ready dict with the whole transcript (states are not exported: they rebuild from it)."""
    return ExportedSession(
        format=EXPORT_FORMAT, version=EXPORT_VERSION, title=info.title, collection=info.collection,
        system_prompt=info.system_prompt, created_at=info.created_at,
        messages=[ExportedMessage(role=m.role, text=m.text, citations=m.citations, created_at=m.created_at)
                  for m in messages],
    ).model_dump(mode="json")


def from_json(data: dict[str, Any] | str | bytes) -> ExportedSession:
    """Validate an export, and hold it to the live chat's limits (memory/limits.py); `InvalidTranscriptError`
    says what is wrong with it."""
    if isinstance(data, str | bytes) and len(data) > MAX_IMPORT_BYTES:
        raise InvalidTranscriptError(f"This file has {len(data) / (1 << 20):,.1f} MiB; a session export can have at "
                                     f"most {MAX_IMPORT_BYTES >> 20} MiB. Nothing was imported.")
    exported = _parse(data)
    _hold_to_limits(exported)
    return exported


def _refuse(problem: str) -> InvalidTranscriptError:
    return InvalidTranscriptError(f"This session cannot be imported: {problem}. Nothing was imported.")


def _hold_to_limits(exported: ExportedSession) -> None:
    if exported.collection is not None:
        found = NOT_IN_NAMES.search(exported.collection)
        if found:
            raise _refuse(f"its collection name holds the control character {codepoint(found.group())}")
        if not 1 <= len(exported.collection.strip()) <= COLLECTION_NAME_MAX:
            raise _refuse(f"its collection name has {len(exported.collection):,} characters; a collection name "
                          f"has 1 to {COLLECTION_NAME_MAX}")
    if len(exported.messages) > MAX_IMPORT_MESSAGES:
        raise _refuse(f"it has {len(exported.messages):,} messages; an import can have at most "
                      f"{MAX_IMPORT_MESSAGES:,}")
    for number, m in enumerate(exported.messages, start=1):
        where = f"message {number:,} ({m.role})"
        if m.role not in ("user", "assistant"):
            raise _refuse(f"{where} is a system message; only the conversation itself (user and assistant "
                          "messages) is imported, never instructions to the model")
        limit = MAX_MESSAGE_CHARS if m.role == "user" else MAX_ANSWER_CHARS
        if len(m.text) > limit:
            raise _refuse(f"{where} has {len(m.text):,} characters; a {m.role} message can have at most {limit:,}")
        check_text(m.text, f"Message {number:,} ({m.role})")
        if m.citations is not None:
            if len(m.citations) > MAX_CITATIONS:
                raise _refuse(f"{where} has {len(m.citations):,} sources; a message can have at most {MAX_CITATIONS}")
            for c in m.citations:
                if len(json.dumps(c, ensure_ascii=False, default=str)) > MAX_CITATION_CHARS:
                    raise _refuse(f"{where} has a source of more than {MAX_CITATION_CHARS:,} characters")


def _parse(data: dict[str, Any] | str | bytes) -> ExportedSession:
    try:
        if isinstance(data, str | bytes):
            return ExportedSession.model_validate_json(data)
        return ExportedSession.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidTranscriptError(f"This is not a Rillet session export ({problems}). Export the session "
                                     "again with `rillet` and import that file.") from None


def _citation(c: dict[str, Any]) -> str:
    if "path" in c:
        lines = f":{c['start_line']}-{c['end_line']}" if "start_line" in c and "end_line" in c else ""
        return f"`{c['path']}{lines}`"
    return json.dumps(c, ensure_ascii=False)


def to_markdown(info: SessionInfo, messages: list[ChatMessage]) -> str:
    """A readable transcript with its sources."""
    lines = [f"# {info.title}", "", f"_Started {info.created_at:%Y-%m-%d %H:%M} UTC"
             + (f", collection `{info.collection}`" if info.collection else "") + "._", ""]
    if info.system_prompt:
        lines += ["## System", "", info.system_prompt, ""]
    for m in messages:
        lines += [f"## {SPEAKERS.get(m.role, m.role)}", "", m.text, ""]
        if m.citations:
            lines += ["Sources:", *(f"- {_citation(c)}" for c in m.citations), ""]
    return "\n".join(lines)
