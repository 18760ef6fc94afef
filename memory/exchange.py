"""Sessions as files people keep: Markdown to read, JSON to move between installations."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from memory.errors import InvalidTranscriptError
from memory.records import ChatMessage, SessionInfo

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
    """Validate an export; `InvalidTranscriptError` says what is wrong with it."""
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
