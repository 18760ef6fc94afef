"""The OpenAI HTTP API's requests as Rillet reads them, and its error shape.

Only the fields Rillet acts on are declared; other fields OpenAI clients send (`user`, `logprobs`,
`parallel_tool_calls`, ...) are ignored, except those that ask for something Rillet cannot do (`n` above
1, `tools`), which are refused saying so. Rillet's own options go in the optional `rillet` object.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class Message(_Lenient):
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        """The message's text; only text parts can be read (images and audio are refused)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        kinds = {part.type for part in self.content} - {"text"}
        if kinds:
            raise ApiError(400, f"Rillet reads text only; this message has {', '.join(sorted(kinds))} parts.",
                           param="messages", code="unsupported_content")
        return "".join(part.text or "" for part in self.content)


class StreamOptions(_Lenient):
    include_usage: bool = False


class RilletOptions(_Lenient):
    """Rillet's extension of a chat completion request."""

    session_id: int | None = Field(None, description="Continue this saved session: only the last user message "
                                   "is read; the rest of the conversation comes from the session's saved state.")
    collection: str | None = Field(None, description="Retrieve passages of this collection for the turn (with a "
                                   "session: the collection the session searches from now on).")
    top_k: int | None = Field(None, ge=0, le=20, description="Passages retrieved for the turn.")


class ChatCompletionRequest(_Lenient):
    model: str
    messages: list[Message]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    tools: list[Any] | None = None
    rillet: RilletOptions | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "`stop` takes at most 4 sequences.", param="stop")
        return tuple(s for s in stops if s)


class EmbeddingRequest(_Lenient):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
