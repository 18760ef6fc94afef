"""The OpenAI-compatible HTTP API under /v1, served beside the page (ui/server.py mounts it).

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:7860/v1", api_key="(your key, or anything without accounts)")
    for chunk in client.chat.completions.create(model="student", stream=True,
                                                messages=[{"role": "user", "content": "What is a rillet?"}]):
        print(chunk.choices[0].delta.content or "", end="") if chunk.choices else None

`GET /v1/models`, `POST /v1/chat/completions` (streamed as server-sent events ending with `data: [DONE]`,
or whole), `POST /v1/embeddings` (the retrieval embedder). Errors come in OpenAI's shape with its status
codes (400 bad request, 401 no or wrong key, 404 unknown model or session, 500 a bug, logged).

OpenAI clients resend the whole conversation with every request. Without `rillet.session_id` it is read
as a fresh conversation and nothing is stored. With it, only the last user message is read: the rest of
the conversation is the session's saved state (whatever earlier messages the request repeats are not
read), and the turn is stored in that session like one sent from the page. The answer's `rillet` object
carries the session and the citations of the passages it read.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.chat.completion import complete
from app.chat.events import follow
from app.chat.models import MODEL_NAMES
from app.engine import ChatEngine, TurnOptions
from backbone.errors import SetupError, UserError, report
from memory.errors import SessionNotFoundError
from memory.records import ChatMessage
from retrieval.service import CollectionNotFoundError
from ui.openai_schema import ApiError, ChatCompletionRequest, EmbeddingRequest

log = logging.getLogger(__name__)

MAX_EMBEDDING_INPUTS = 256
MAX_EMBEDDING_CHARS = 32_000
STARTED = int(time.time())

# Who is asking: (the Authorization header, the client's address) -> a user name, or None where the server
# has no accounts; raises ApiError(401). `Scope` gives the engine as that user may use it.
Authenticate = Callable[[str | None, str], str | None]
Scope = Callable[[ChatEngine, str | None], Any]


def open_access(authorization: str | None, client: str) -> str | None:
    """No accounts: everyone who reaches the (loopback) port is the one user."""
    return None


def _finish_reason(stop_reason: str) -> str:
    return "length" if stop_reason in ("max_new_tokens", "context_full") else "stop"


def _citation(source: Any) -> dict[str, Any]:
    return source.to_dict()


def _api_error(exc: BaseException) -> ApiError:
    """A failure as OpenAI's error: the user's to fix (4xx, the advice as is) or a bug (500, logged)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SessionNotFoundError | CollectionNotFoundError):
        return ApiError(404, str(exc), code="not_found")
    if isinstance(exc, SetupError):
        return ApiError(500, str(exc), type="server_error")
    if isinstance(exc, UserError):
        return ApiError(400, str(exc))
    return ApiError(500, report(exc, log, "OpenAI API call"), type="server_error")


def _error_response(exc: BaseException) -> JSONResponse:
    error = _api_error(exc)
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _options(body: ChatCompletionRequest) -> TurnOptions:
    chosen: dict[str, Any] = {"model": body.model, "stop": body.stops()}
    for name, value in (("temperature", body.temperature), ("top_p", body.top_p), ("seed", body.seed),
                        ("max_new_tokens", body.max_completion_tokens or body.max_tokens),
                        ("presence_penalty", body.presence_penalty), ("frequency_penalty", body.frequency_penalty),
                        ("top_k", body.rillet.top_k if body.rillet else None)):
        if value is not None:
            chosen[name] = value
    if chosen.get("max_new_tokens", 0) > 4096:
        raise ApiError(400, "max_tokens can be at most 4096.", param="max_tokens")
    return TurnOptions(**chosen)


class ChatCompletions:
    """One request's answer: queued on the engine, then read whole or as chunks."""

    def __init__(self, engine: Any, body: ChatCompletionRequest) -> None:
        if body.model not in MODEL_NAMES:
            raise ApiError(404, f"The model {body.model!r} does not exist; choose one of {', '.join(MODEL_NAMES)} "
                           "(GET /v1/models).", param="model", code="model_not_found")
        if body.n != 1:
            raise ApiError(400, "Rillet writes one answer per request; leave `n` at 1.", param="n")
        if body.tools:
            raise ApiError(400, "Rillet has no tool calling; send the request without `tools`.", param="tools")
        self.body, self.engine = body, engine
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        options = _options(body)
        extension = body.rillet
        messages = [ChatMessage(m.role, m.text()) for m in body.messages]
        self.session_id = extension.session_id if extension else None
        if self.session_id is not None:
            if not messages or messages[-1].role != "user":
                raise ApiError(400, "The last message must be the user's: it is the one added to the session.",
                               param="messages")
            if extension and extension.collection is not None:
                engine.set_collection(self.session_id, extension.collection or None)
            self.ticket = engine.ask(self.session_id, messages[-1].text, options)
        else:
            self.ticket = complete(engine, messages, options, extension.collection if extension else None)

    def _extension(self, result: Any) -> dict[str, Any]:
        return {"session_id": self.session_id, "citations": [_citation(c) for c in result.citations],
                "notice": getattr(result, "notice", None)}

    def _usage(self, result: Any) -> dict[str, int]:
        return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.answer_tokens,
                "total_tokens": result.prompt_tokens + result.answer_tokens}

    def _events(self) -> Iterator[Any]:
        """The turn's progress, through its end; a failure raises, a stream cut short cancels the turn."""
        try:
            for turn in follow(self.ticket):
                if turn.stage == "failed":
                    raise turn.error  # the model queue logged it (a bug with its traceback)
                if turn.stage == "cancelled":
                    raise ApiError(503, "The turn was cancelled before it started; nothing was stored. Send it "
                                   "again.", type="server_error")
                yield turn
        finally:
            if not self.ticket.done:
                self.ticket.cancel()  # the client went away: stop, keeping what was written

    def whole(self) -> dict[str, Any]:
        result = next(t.result for t in self._events() if t.stage == "finished")
        answer = result.answer
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.body.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer, "refusal": None},
                             "logprobs": None, "finish_reason": _finish_reason(result.stop_reason)}],
                "usage": self._usage(result), "rillet": self._extension(result)}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.body.model,
                 "system_fingerprint": None,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}
        return _sse(chunk)

    def chunks(self) -> Iterator[str]:
        """Server-sent events: the role, the text as it comes, the finish reason (with the citations), the
        usage when `stream_options.include_usage` asks for it, then `[DONE]`. An error after the first event
        is sent as an event of its own (OpenAI's clients raise it)."""
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            for turn in self._events():
                if turn.delta:
                    yield self._chunk({"content": turn.delta})
                elif turn.stage == "finished":
                    result = turn.result
                    yield self._chunk({}, _finish_reason(result.stop_reason), rillet=self._extension(result))
                    if self.body.stream_options and self.body.stream_options.include_usage:
                        yield _sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                    "model": self.body.model, "choices": [], "usage": self._usage(result)})
        except Exception as exc:
            yield _sse(_api_error(exc).body())
        yield "data: [DONE]\n\n"


class AnswerStream(StreamingResponse):
    """The chunks of one answer; when the response ends early (the client went away), the turn is
    cancelled there and then, not whenever the abandoned iterator happens to be collected."""

    def __init__(self, call: ChatCompletions) -> None:
        super().__init__(call.chunks(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.ticket = call.ticket

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.ticket.done:
                self.ticket.cancel()  # stop, keeping what was written


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _embedding_inputs(body: EmbeddingRequest) -> list[str]:
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "`input` must be a text or a non-empty list of texts (token arrays are not read: "
                       "send the text).", param="input")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise ApiError(400, f"`input` has {len(texts):,} texts; send at most {MAX_EMBEDDING_INPUTS} per request.",
                       param="input")
    for number, text in enumerate(texts, 1):
        if not text.strip():
            raise ApiError(400, f"Text {number} of `input` is empty.", param="input")
        if len(text) > MAX_EMBEDDING_CHARS:
            raise ApiError(400, f"Text {number} of `input` has {len(text):,} characters; at most "
                           f"{MAX_EMBEDDING_CHARS:,} are read.", param="input")
    return texts  # type: ignore[return-value]


def build_openai_app(engine: ChatEngine, authenticate: Authenticate = open_access,
                     scope: Scope | None = None) -> FastAPI:
    """The /v1 application (mount it at /v1) over `engine`."""
    api = FastAPI(title="Rillet OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)
    scoped: Scope = scope or (lambda e, user: e)

    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = f"{'.'.join(where) or 'The request'}: {first.get('msg', 'is not valid')}."
        if not where:
            message = "The request body must be a JSON object (Content-Type: application/json)."
        return _error_response(ApiError(400, message, param=".".join(where) or None))

    @api.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(ApiError(404, f"No endpoint {request.method} {request.url.path}; see GET /v1/models, "
                                        "POST /v1/chat/completions, POST /v1/embeddings.", code="unknown_url"))

    @api.exception_handler(405)
    async def wrong_method(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(ApiError(405, f"{request.url.path} does not take {request.method}.",
                                        code="method_not_allowed"))

    def user_of(request: Request) -> str | None:
        client = request.client.host if request.client else "unknown"
        return authenticate(request.headers.get("authorization"), client)

    def model_entry(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": STARTED, "owned_by": "rillet"}

    @api.get("/models")
    async def models(request: Request) -> dict[str, Any]:
        user_of(request)
        names = [*MODEL_NAMES, engine.retrieval.embedder.name]
        return {"object": "list", "data": [model_entry(n) for n in names]}

    @api.get("/models/{name}")
    async def model(name: str, request: Request) -> dict[str, Any]:
        user_of(request)
        if name not in (*MODEL_NAMES, engine.retrieval.embedder.name):
            raise ApiError(404, f"The model {name!r} does not exist.", param="model", code="model_not_found")
        return model_entry(name)

    @api.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        user = user_of(request)
        try:
            call = await run_in_threadpool(ChatCompletions, scoped(engine, user), body)
        except Exception as exc:
            return _error_response(exc)
        if body.stream:
            return AnswerStream(call)
        try:
            return await run_in_threadpool(call.whole)
        except Exception as exc:
            return _error_response(exc)

    @api.post("/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
        user_of(request)
        embedder = engine.retrieval.embedder
        if body.model != embedder.name and not body.model.endswith(f"/{embedder.name}"):
            raise ApiError(404, f"The embedding model is {embedder.name!r}; ask for that one.", param="model",
                           code="model_not_found")
        if body.dimensions is not None and body.dimensions != embedder.dim:
            raise ApiError(400, f"{embedder.name} gives {embedder.dim} dimensions; leave out `dimensions`.",
                           param="dimensions")
        texts = _embedding_inputs(body)
        try:
            vectors = await run_in_threadpool(embedder.embed, texts)
            tokens = sum(await run_in_threadpool(embedder.count_tokens, texts))
        except Exception as exc:
            raise _api_error(exc) from None

        def encoded(vector: np.ndarray) -> list[float] | str:
            if body.encoding_format == "base64":
                return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            return [float(x) for x in vector]

        return {"object": "list", "model": embedder.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)]}

    return api


__all__ = ["ApiError", "build_openai_app", "open_access"]
