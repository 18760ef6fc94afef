"""The programmatic API of the web app (gradio_client, curl): sessions, collections and streamed answers.

    from gradio_client import Client
    client = Client("http://127.0.0.1:7860/")
    session = client.predict(title="Notes", collection="rillet", api_name="/create_session")
    for update in client.submit(session_id=session["id"], message="Where is the config?", api_name="/ask"):
        print(update["text"])  # the last update has done=True, citations (citation, file, lines, text), timings

Going back: `/regenerate` streams a new answer to the last question (the old one stays: `/load_session`
lists a message's `answers` and which is `chosen`; `/choose_answer` picks one), `/undo` deletes the last
turn, `/branch` copies the first `keep` messages into a new session, and `/edit` asks a new question in
place of an earlier one in such a branch (its updates carry the branch's `session_id`).

Errors reach the client as `gradio_client.exceptions.AppError` carrying the same message the page shows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import gradio as gr

from app.chat import defaults
from app.chat.events import follow
from app.engine import ChatEngine, TurnOptions, TurnRefused
from backbone.errors import report, shown

log = logging.getLogger(__name__)


def _citation(c: dict[str, Any]) -> dict[str, Any]:
    """A citation for the wire. `path` becomes `file`: gradio_client would take a dict with a "path" for
    a file to download."""
    return {("file" if key == "path" else key): value for key, value in c.items()}


def _session(info: Any) -> dict[str, Any]:
    return {"id": info.id, "title": info.title, "collection": info.collection, "messages": info.message_count,
            "tokens": info.token_count, "updated_at": info.updated_at.isoformat(), "parent_id": info.parent_id,
            "branch_point": info.branch_point}


def _view(view: Any) -> dict[str, Any]:
    """An opened session with its messages; a regenerated answer also lists every answer written there."""
    messages = []
    for m in view.messages:
        if m.role == "system":
            continue
        item = {"role": m.role, "text": m.text, "citations": [_citation(c) for c in m.citations or []]}
        place = (view.variants or {}).get(m.ordinal)
        if place is not None:
            item |= {"answers": [a.text for a in place.answers], "chosen": place.chosen}
        messages.append(item)
    return {**_session(view.info), "notice": view.notice, "state_tokens": view.state_tokens,
            "state_bytes": view.state_bytes, "messages": messages}


def _options(top_k: Any, temperature: Any, max_new_tokens: Any, model: Any, top_p: Any, repetition_penalty: Any,
             presence_penalty: Any, frequency_penalty: Any, penalty_window: Any, no_repeat_ngram_size: Any,
             min_p: Any, loop_stop: Any) -> TurnOptions:
    return TurnOptions(
        top_k=int(top_k), temperature=float(temperature), max_new_tokens=int(max_new_tokens),
        model=model or None, top_p=float(top_p), repetition_penalty=float(repetition_penalty),
        presence_penalty=float(presence_penalty), frequency_penalty=float(frequency_penalty),
        penalty_window=int(penalty_window), no_repeat_ngram_size=int(no_repeat_ngram_size), min_p=float(min_p),
        loop_stop=int(loop_stop))


def _stream(ticket: Any, **extra: Any) -> Iterator[dict[str, Any]]:
    """A turn's updates for the wire: the text so far, then the result; `extra` goes into each update."""
    try:
        for turn in follow(ticket):
            if turn.stage == "reading":
                sources = [s.citation for s in turn.retrieved.sources] if turn.retrieved else []
                yield {"text": "", "done": False, "waiting": None, "sources": sources, **extra}
            elif turn.stage == "finished":
                r = turn.result
                yield {"text": r.answer, "done": True, "stop_reason": r.stop_reason, "model": r.model,
                       "citations": [_citation(c.to_dict()) for c in r.citations], "prompt_tokens": r.prompt_tokens,
                       "answer_tokens": r.answer_tokens, "first_token_s": r.first_token_s,
                       "tokens_per_s": r.tokens_per_s, "seconds": r.seconds, "state_tokens": r.state_tokens,
                       "notice": r.notice, **extra}
                return
            elif turn.stage == "failed":
                raise gr.Error(shown(turn.error))  # the model queue logged it (a bug with its traceback)
            elif turn.stage == "cancelled":
                raise gr.Error("The turn was cancelled before it started; nothing was stored.")
            else:  # waiting, or more text
                yield {"text": turn.text, "done": False, "waiting": None if turn.ahead is None else turn.ahead + 1,
                       **extra}
    finally:
        if not ticket.done:
            ticket.cancel()  # the client went away: stop, keeping what was written


def add_api(engine: ChatEngine) -> None:
    """Register the endpoints on the Blocks being built."""

    def guard(call: Any) -> Any:
        """A `UserError`'s advice reaches the client as is; anything else is logged and reported as internal."""
        try:
            return call()
        except gr.Error:
            raise
        except Exception as exc:
            raise gr.Error(report(exc, log, "API call")) from None

    def list_sessions() -> list[dict[str, Any]]:
        """Sessions, most recently changed first."""
        return [_session(s) for s in engine.list_sessions()]

    def create_session(title: str = "New chat", collection: str = "") -> dict[str, Any]:
        """A new session searching `collection` ("" for none)."""
        return guard(lambda: _session(engine.create_session(title, collection or None)))

    def load_session(session_id: int) -> dict[str, Any]:
        """A session with its messages and citations, its state loaded and ready."""
        return _view(guard(lambda: engine.open_session(int(session_id))))

    def rename_session(session_id: int, title: str) -> dict[str, Any]:
        return guard(lambda: _session(engine.rename_session(int(session_id), title)))

    def delete_session(session_id: int) -> bool:
        guard(lambda: engine.delete_session(int(session_id)))
        return True

    def list_collections() -> list[dict[str, Any]]:
        return [{"name": c.name, "roots": c.roots, "files": c.files, "chunks": c.chunks}
                for c in engine.list_collections()]

    def index_folder(folder: str, name: str = "") -> dict[str, Any]:
        """Index a folder inside the allowed roots into collection `name` (default: the folder's name)."""
        report = guard(lambda: engine.index_folder(folder, name or None))
        return {"collection": report.collection, "files": report.files_total, "indexed": report.indexed,
                "chunks": report.chunks_total, "skipped": len(report.skipped), "failed": len(report.failed),
                "seconds": round(report.seconds, 2)}

    def search(collection: str, query: str, k: int = 5) -> list[dict[str, Any]]:
        """The `k` passages of `collection` that best match `query`, best first (what a turn would cite)."""
        hits = guard(lambda: engine.retrieval.search(collection, query, k=int(k)))
        return [{"citation": h.citation, "file": h.path, "start_line": h.start_line, "end_line": h.end_line,
                 "text": h.text, "score": h.score} for h in hits]

    def cancel(session_id: int) -> int:
        """Stop the session's answer in progress; the number of turns stopped."""
        return engine.cancel(int(session_id))

    def ask(session_id: int, message: str, top_k: int = defaults.TOP_K, temperature: float = defaults.TEMPERATURE,
            max_new_tokens: int = defaults.MAX_NEW_TOKENS, model: str = "", top_p: float = defaults.TOP_P,
            repetition_penalty: float = defaults.REPETITION_PENALTY,
            presence_penalty: float = defaults.PRESENCE_PENALTY,
            frequency_penalty: float = defaults.FREQUENCY_PENALTY, penalty_window: int = defaults.PENALTY_WINDOW,
            no_repeat_ngram_size: int = defaults.NO_REPEAT_NGRAM_SIZE, min_p: float = defaults.MIN_P,
            loop_stop: int = defaults.LOOP_STOP) -> Iterator[dict[str, Any]]:
        """Stream an answer: updates carry the text so far; the last has `done`, citations and timings.
        The decoding settings mean what `rillet chat --help` says (backbone.generate.SamplingConfig)."""
        options = guard(lambda: _options(top_k, temperature, max_new_tokens, model, top_p, repetition_penalty,
                                         presence_penalty, frequency_penalty, penalty_window, no_repeat_ngram_size,
                                         min_p, loop_stop))
        yield from _stream(guard(lambda: engine.ask(int(session_id), message, options)))

    def regenerate(session_id: int, top_k: int = defaults.TOP_K, temperature: float = defaults.TEMPERATURE,
                   max_new_tokens: int = defaults.MAX_NEW_TOKENS, model: str = "", top_p: float = defaults.TOP_P,
                   repetition_penalty: float = defaults.REPETITION_PENALTY,
                   presence_penalty: float = defaults.PRESENCE_PENALTY,
                   frequency_penalty: float = defaults.FREQUENCY_PENALTY, penalty_window: int = defaults.PENALTY_WINDOW,
                   no_repeat_ngram_size: int = defaults.NO_REPEAT_NGRAM_SIZE, min_p: float = defaults.MIN_P,
                   loop_stop: int = defaults.LOOP_STOP) -> Iterator[dict[str, Any]]:
        """Stream a new answer to the last question, as /ask does; the old answer is kept (/choose_answer).
        At temperature 0 it samples at 0.7: greedy decoding would write the same answer again."""
        options = guard(lambda: _options(top_k, temperature, max_new_tokens, model, top_p, repetition_penalty,
                                         presence_penalty, frequency_penalty, penalty_window, no_repeat_ngram_size,
                                         min_p, loop_stop))
        yield from _stream(guard(lambda: engine.regenerate(int(session_id), options)))

    def edit(session_id: int, question: int, message: str, top_k: int = defaults.TOP_K,
             temperature: float = defaults.TEMPERATURE, max_new_tokens: int = defaults.MAX_NEW_TOKENS,
             model: str = "") -> Iterator[dict[str, Any]]:
        """Ask `message` instead of question number `question` (1: the first), in a new branch session from
        the turn before it; the session stays as it is. Updates stream as for /ask, each with the branch's
        `session_id`."""
        def start() -> tuple[Any, Any]:
            questions = [m.ordinal for m in engine.messages(int(session_id)) if m.role == "user"]
            if not 1 <= int(question) <= len(questions):
                raise TurnRefused(f"There is no question {question}; this session has {len(questions)}.")
            options = TurnOptions(top_k=int(top_k), temperature=float(temperature),
                                  max_new_tokens=int(max_new_tokens), model=model or None)
            return engine.edit(int(session_id), questions[int(question) - 1], message, options)

        branch, ticket = guard(start)
        yield from _stream(ticket, session_id=branch.info.id)

    def choose_answer(session_id: int, answer: int) -> dict[str, Any]:
        """Make answer number `answer` (1: the first written) of the last question the one the session holds."""
        return _view(guard(lambda: engine.choose_answer(int(session_id), int(answer) - 1)))

    def undo(session_id: int) -> dict[str, Any]:
        """Delete the last turn (question and answer); the session as it is now."""
        return _view(guard(lambda: engine.undo(int(session_id))))

    def branch(session_id: int, keep: int) -> dict[str, Any]:
        """A new session holding the first `keep` messages of this one, which stays as it is."""
        return _view(guard(lambda: engine.branch(int(session_id), int(keep))))

    for fn in (list_sessions, create_session, load_session, rename_session, delete_session, list_collections,
               search, cancel, choose_answer, undo, branch, regenerate, edit):
        gr.api(fn, api_name=fn.__name__, concurrency_limit=None)
    gr.api(index_folder, api_name="index_folder", concurrency_limit=1, concurrency_id="index")
    gr.api(ask, api_name="ask", concurrency_limit=None)
