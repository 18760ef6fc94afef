"""The chat engine: one user turn = retrieve, answer in a fork of the session state, commit.

    engine = ChatEngine(settings)
    session = engine.create_session(collection="rillet")
    for event in engine.ask(session.id, "Where is the config loaded?"):
        ...  # Waiting / Started / Retrieved / Piece (streamed text) / Finished(TurnResult) / Failed: see
             # app/chat/events.py, whose `follow` folds them into what to show

For each turn, on the model's queue (app/chat/scheduler.py):
1. retrieve the top-k passages of the session's collection, and the top-k earlier passages of this
   conversation from its recall index (memory/recall.py);
2. clone the session state (small), read passages + message into the clone and stream the answer;
3. commit: read only the user message and the final answer into the persistent state (the same
   pieces `memory.transcript.replay` would read, so a rebuilt state is identical), then store the turn
   and the state in one transaction. Passages never enter the persistent state.
Stop keeps the answer as far as it got: it is committed like any other, marked as stopped.

Going back costs a snapshot load plus a short re-read, never the whole transcript: `regenerate` answers
the last question again from the state before it (the old answer stays, selectable with
`choose_answer`), `undo` removes the last turn, `branch` and `edit` start a new session from an earlier
turn, leaving the original as it was (memory.sessions.SessionStore.state_at / branch / choose).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from app.chat import defaults
from app.chat.events import Retrieved
from app.chat.generation import Piece, generation_steps, timed_pieces
from app.chat.models import ModelRegistry, ServedModel, shared_registry
from app.chat.prompt import DEFAULT_SYSTEM_PROMPT, Recollection, Source, build_prompt
from app.chat.scheduler import Ticket
from app.config import Settings
from app.database import open_database
from backbone.errors import InvalidRequest, UserError
from memory.errors import SessionConflictError, SessionNotFoundError
from memory.limits import MAX_MESSAGE_CHARS
from memory.recall import SessionRecall
from memory.records import ChatMessage, LoadedSession, SessionInfo, Variants
from memory.sessions import SessionStore
from memory.text import clean_message
from memory.transcript import feed
from retrieval.service import CollectionNotFoundError, Retrieval

log = logging.getLogger(__name__)

MAX_MESSAGE_TOKENS = 4_000
CONTEXT_MARGIN = 8  # tokens the commit may need beyond the fork (closing an answer cut at max_new_tokens)
RECENT_MESSAGES = 2  # the last turn is fresh in the state; recall looks further back
STOPPED_NOTE = "\n\n_(stopped)_"
DOCS_COLLECTION = "rillet-docs"


class TurnRefused(InvalidRequest):
    """The turn cannot run as asked; the message says what to do. Nothing was sent or stored."""


class TurnNotSaved(UserError, RuntimeError):
    """The answer was written, but the database did not store the turn: nothing of it was kept (send it again)."""


@dataclass(frozen=True)
class TurnOptions:
    top_k: int = defaults.TOP_K
    recall_k: int = 2
    temperature: float = defaults.TEMPERATURE
    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    source_tokens: int = defaults.SOURCE_TOKENS
    top_p: float = defaults.TOP_P
    seed: int | None = None
    # Repetition controls and min-p: backbone.generate.SamplingConfig says what each does, and checks them.
    repetition_penalty: float = defaults.REPETITION_PENALTY
    presence_penalty: float = defaults.PRESENCE_PENALTY
    frequency_penalty: float = defaults.FREQUENCY_PENALTY
    penalty_window: int = defaults.PENALTY_WINDOW
    no_repeat_ngram_size: int = defaults.NO_REPEAT_NGRAM_SIZE
    min_p: float = defaults.MIN_P
    loop_stop: int = defaults.LOOP_STOP
    model: str | None = None  # None: settings.model
    stop: tuple[str, ...] = ()  # the answer ends before the first of these strings (OpenAI's `stop`)

    def sampling(self) -> Any:
        """The backbone's SamplingConfig for these options (ValueError when one is out of range)."""
        from backbone.generate import SamplingConfig

        return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              seed=self.seed, repetition_penalty=self.repetition_penalty,
                              presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                              penalty_window=self.penalty_window, no_repeat_ngram_size=self.no_repeat_ngram_size,
                              min_p=self.min_p, loop_stop=self.loop_stop)

    def __post_init__(self) -> None:
        checks = [(0 <= self.top_k <= 20, "top-k must be between 0 and 20"),
                  (0 <= self.recall_k <= 10, "recall-k must be between 0 and 10"),
                  (0 <= self.temperature <= 2, "temperature must be between 0 and 2"),
                  (1 <= self.max_new_tokens <= 4096, "max answer tokens must be between 1 and 4096"),
                  (64 <= self.source_tokens <= 6000, "the passage budget must be between 64 and 6000 tokens")]
        for ok, message in checks:
            if not ok:
                raise TurnRefused(f"Invalid setting: {message}.")
        try:  # what the sampler takes (top-p, seed, repetition controls, min-p) is checked by SamplingConfig alone
            self.sampling()
        except (TypeError, ValueError) as exc:
            raise TurnRefused(f"Invalid setting: {exc}") from None


@dataclass
class TurnResult:
    session: SessionInfo
    message: str
    answer: str
    citations: list[Source]
    stop_reason: str
    model: str
    prompt_tokens: int
    answer_tokens: int
    first_token_s: float | None
    seconds: float
    state_tokens: int
    state_bytes: int
    notice: str | None = None
    last_token_s: float | None = None  # when the last answer token came, from the start of the turn

    @property
    def tokens_per_s(self) -> float | None:
        """Answer tokens per second after the first one: the decoding speed the user saw."""
        if self.first_token_s is None or self.last_token_s is None or self.answer_tokens < 2:
            return None
        elapsed = self.last_token_s - self.first_token_s
        return (self.answer_tokens - 1) / elapsed if elapsed > 0 else None


@dataclass(frozen=True)
class _Start:
    """Where a turn starts: the state before the user's message, the messages before it, and (when an
    answer is regenerated) the ordinal of the answer the new one replaces."""

    loaded: LoadedSession
    message: str
    replaces: int | None = None


@dataclass(frozen=True)
class SessionView:
    """An opened session: what the UI shows."""

    info: SessionInfo
    messages: list[ChatMessage]
    notice: str | None
    state_tokens: int
    state_bytes: int
    replayed_tokens: int  # transcript tokens re-read to build the state (0: from a snapshot or the cache)
    variants: dict[int, Variants] | None = None  # places with regenerated answers, by ordinal


@dataclass
class _Cached:
    fingerprint: str
    version: int
    state: Any


class ChatEngine:
    """Sessions, collections and chat turns over one shared model queue. Safe to use from many threads."""

    def __init__(self, settings: Settings, *, registry: ModelRegistry | None = None,
                 retrieval: Retrieval | None = None, store: SessionStore | None = None,
                 cached_states: int = 8) -> None:
        self.settings = settings
        settings.ensure_dirs()
        self.registry = registry or shared_registry(settings)
        database = None if store is not None and retrieval is not None else open_database(settings.db_url)
        self.store = store or SessionStore(database)
        self.retrieval = retrieval or Retrieval(database, settings.indexes, vector_store=settings.vector_store)
        self.recall = SessionRecall(self.store, self.retrieval.embedder, settings.recall_dir,
                                    new_index=_new_index, load_index=_load_index)
        self._states: OrderedDict[int, _Cached] = OrderedDict()
        self._cached_states = cached_states
        self._states_lock = threading.Lock()
        self._tickets: list[Ticket] = []
        self._tickets_lock = threading.Lock()

    # --- models ----------------------------------------------------------------------------------
    def served(self, model: str | None = None) -> ServedModel:
        return self.registry.get(model)  # type: ignore[arg-type]

    # --- sessions --------------------------------------------------------------------------------
    def list_sessions(self, limit: int = 50) -> list[SessionInfo]:
        return self.store.list_sessions(limit=limit)

    def create_session(self, title: str = "New chat", collection: str | None = None) -> SessionInfo:
        if collection:
            self.retrieval.get_collection(collection)  # a clear error for a name that does not exist
        return self.store.create(title, collection=collection, system_prompt=DEFAULT_SYSTEM_PROMPT)

    def session(self, session_id: int) -> SessionInfo:
        return self.store.get(session_id)

    def rename_session(self, session_id: int, title: str) -> SessionInfo:
        return self.store.rename(session_id, title)

    def set_collection(self, session_id: int, collection: str | None) -> SessionInfo:
        """Which collection the session's questions search (None: none). Not part of the transcript, so
        the session's version (and its saved state) stay as they are."""
        if collection:
            self.retrieval.get_collection(collection)
        return self.store.set_collection(session_id, collection)

    def delete_session(self, session_id: int) -> None:
        self.cancel(session_id)
        self.store.delete(session_id)
        self.recall.forget(session_id)
        with self._states_lock:
            self._states.pop(session_id, None)

    def export_session(self, session_id: int, folder: Path, fmt: str = "json") -> Path:
        """Write the transcript to `folder` as JSON (re-importable) or Markdown (readable)."""
        import json
        import re

        info = self.store.get(session_id)
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", info.title).strip("-")[:60] or "session"
        folder.mkdir(parents=True, exist_ok=True)
        if fmt == "markdown":
            path = folder / f"{stem}-{session_id}.md"
            path.write_text(self.store.export_markdown(session_id), encoding="utf-8")
        elif fmt == "json":
            path = folder / f"{stem}-{session_id}.json"
            path.write_text(json.dumps(self.store.export_json(session_id), indent=1, ensure_ascii=False),
                            encoding="utf-8")
        else:
            raise InvalidRequest(f"Unknown export format {fmt!r}; use json or markdown.")
        return path

    def import_session(self, data: str | bytes) -> SessionInfo:
        """A session from an exported file, held to the live limits; it gets Rillet's own system prompt."""
        info = self.store.import_json(data, system_prompt=DEFAULT_SYSTEM_PROMPT)
        self._index_for_recall(info.id)
        return info

    def open_session(self, session_id: int, model: str | None = None) -> SessionView:
        """The transcript and the state (from its snapshot, or rebuilt) ready in the engine's cache."""
        served = self.served(model)
        loaded: LoadedSession | None = None

        def job(ticket: Ticket) -> Iterator[None]:
            nonlocal loaded
            loaded = self._load(session_id, served)
            self._index_for_recall(session_id)
            yield None

        self.registry.scheduler.run(job, key=_key(session_id))
        assert loaded is not None
        return self._view(loaded)

    def _view(self, loaded: LoadedSession) -> SessionView:
        return SessionView(loaded.info, loaded.messages, loaded.notice, loaded.state.num_tokens, loaded.state.nbytes,
                           loaded.replayed_tokens, self.store.variants(loaded.info.id))

    def messages(self, session_id: int) -> list[ChatMessage]:
        return self.store.messages(session_id)

    def variants(self, session_id: int) -> dict[int, Variants]:
        """The places where an answer was regenerated, each with every answer written there."""
        return self.store.variants(session_id)

    def _load(self, session_id: int, served: ServedModel) -> LoadedSession:
        """Runs on the model queue. Uses the cached state while the session's version is unchanged."""
        model = served.model
        info = self.store.get(session_id)
        with self._states_lock:
            cached = self._states.get(session_id)
            if cached and cached.version == info.version and cached.fingerprint == model.fingerprint:
                self._states.move_to_end(session_id)
                return LoadedSession(info, self.store.messages(session_id), cached.state)
        loaded = self.store.load(session_id, model, progress=False)
        self._remember(session_id, model.fingerprint, loaded.version, loaded.state)
        return loaded

    def _remember(self, session_id: int, fingerprint: str, version: int, state: Any) -> None:
        with self._states_lock:
            self._states[session_id] = _Cached(fingerprint, version, state)
            self._states.move_to_end(session_id)
            while len(self._states) > self._cached_states:
                self._states.popitem(last=False)

    def _forget_state(self, session_id: int) -> None:
        with self._states_lock:
            self._states.pop(session_id, None)

    # --- collections -----------------------------------------------------------------------------
    def list_collections(self) -> list[Any]:
        return self.retrieval.list_collections()

    def index_folder(self, folder: str, name: str | None = None, progress: Any = None) -> Any:
        """Create (or refresh) a collection over a folder inside the allowed roots, and index it."""
        from app.chat.folders import allowed_folder

        path = allowed_folder(folder, self.settings.roots)
        name = (name or "").strip() or path.name or "root"
        self.retrieval.ensure_collection(name, path)
        return self.retrieval.index(name, progress=progress)

    def index_project_docs(self, progress: Any = None) -> Any:
        """Rillet's own Markdown as the collection "rillet-docs" (the first-run offer). Its folder is the
        application's own, so it is read whatever the allowed roots are."""
        folder = project_docs_folder()
        if folder is None:
            raise UserError("Rillet's own documentation is not on this machine (installed without the "
                                    "repository); index a folder of yours instead.")
        try:
            self.retrieval.get_collection(DOCS_COLLECTION)
        except CollectionNotFoundError:
            # Markdown (and the extension-less Makefile, Dockerfile) outside the tests' fixtures
            self.retrieval.create_collection(DOCS_COLLECTION, [folder], ignore=["*.*", "!*.md", "tests/"])
        return self.retrieval.index(DOCS_COLLECTION, progress=progress)

    def delete_collection(self, name: str) -> None:
        self.retrieval.delete_collection(name)

    # --- chat turns ------------------------------------------------------------------------------
    def check_message(self, message: str, served: ServedModel) -> str:
        """The message to send, or `TurnRefused` saying why not (before anything is queued)."""
        if not isinstance(message, str):
            raise TurnRefused("The message is empty; type a question first.")
        message, _ = clean_message(message)  # control characters: removed (`ask` tells the user)
        if not message.strip():
            raise TurnRefused("The message is empty; type a question first.")
        if len(message) > MAX_MESSAGE_CHARS:
            raise TurnRefused(f"The message has {len(message):,} characters; one message can have at most "
                              f"{MAX_MESSAGE_CHARS:,}. Shorten it, or index the text as a collection and ask "
                              "about it. Nothing was sent.")
        tokens = len(served.model.tokenizer.encode(message))
        if tokens > MAX_MESSAGE_TOKENS:
            raise TurnRefused(f"The message is {tokens:,} tokens long; one message can have at most "
                              f"{MAX_MESSAGE_TOKENS:,}. Shorten it or split it. Nothing was sent.")
        return message.strip()

    def ask(self, session_id: int, message: str, options: TurnOptions | None = None) -> Ticket:
        """Queue a turn; iterate the ticket for its events. `TurnRefused` for bad input, at once."""
        options = options or TurnOptions()
        served = self.served(options.model)
        removed = clean_message(message)[1] if isinstance(message, str) else None
        message = self.check_message(message, served)
        info = self.store.get(session_id)  # SessionNotFoundError for a deleted session
        if info.collection:
            try:
                self.retrieval.get_collection(info.collection)
            except CollectionNotFoundError:
                raise TurnRefused(f"This session searches the collection {info.collection!r}, which was deleted. "
                                  "Pick another collection (or none) for it. Nothing was sent.") from None
        started = time.perf_counter()
        ticket = self.registry.scheduler.submit(
            lambda t: self._turn(t, session_id, message, options, served, started, removed), key=_key(session_id))
        with self._tickets_lock:
            self._tickets = [t for t in self._tickets if not t.done] + [ticket]
        return ticket

    def regenerate(self, session_id: int, options: TurnOptions | None = None) -> Ticket:
        """Queue a new answer to the last question (with these options); the old answer is kept as an
        alternative. Iterate the ticket as for `ask`. At temperature 0 it samples (defaults.REGENERATE_TEMPERATURE),
        since greedy decoding would write the same answer again."""
        options = options or TurnOptions()
        if options.temperature == 0:
            options = replace(options, temperature=defaults.REGENERATE_TEMPERATURE)
        served = self.served(options.model)
        self._last_question(self.store.messages(session_id))  # TurnRefused at once when there is none
        started = time.perf_counter()
        ticket = self.registry.scheduler.submit(
            lambda t: self._turn(t, session_id, "", options, served, started, regenerate=True), key=_key(session_id))
        with self._tickets_lock:
            self._tickets = [t for t in self._tickets if not t.done] + [ticket]
        return ticket

    @staticmethod
    def _last_question(messages: list[ChatMessage]) -> int:
        """The ordinal of the question whose answer ends the transcript."""
        if len(messages) < 2 or messages[-1].role != "assistant" or messages[-2].role != "user":
            raise TurnRefused("There is no answer to regenerate yet; ask a question first.")
        return len(messages) - 2

    def choose_answer(self, session_id: int, variant: int, model: str | None = None) -> SessionView:
        """Make answer `variant` (0: the first written) of the last question the one the session holds."""
        served = self.served(model)

        def job(ticket: Ticket) -> Iterator[None]:
            messages = self.store.messages(session_id)
            if not messages:
                raise TurnRefused("This session has no answer yet.")
            self._forget_state(session_id)
            loaded = self.store.choose(session_id, len(messages) - 1, variant, served.model)
            self._remember(session_id, served.model.fingerprint, loaded.version, loaded.state)
            yield None
            return loaded

        return self._view(self.registry.scheduler.run(job, key=_key(session_id)))

    def undo(self, session_id: int, model: str | None = None) -> SessionView:
        """Delete the last turn (the last question and what answered it); the state goes back with it."""
        served = self.served(model)

        def job(ticket: Ticket) -> Iterator[None]:
            questions = [i for i, m in enumerate(self.store.messages(session_id)) if m.role == "user"]
            if not questions:
                raise TurnRefused("There is no turn to undo in this session.")
            self._forget_state(session_id)
            loaded = self.store.branch(session_id, questions[-1], served.model, fork=False, progress=False)
            self._remember(session_id, served.model.fingerprint, loaded.version, loaded.state)
            yield None
            return loaded

        return self._view(self.registry.scheduler.run(job, key=_key(session_id)))

    def branch(self, session_id: int, keep: int, model: str | None = None) -> SessionView:
        """A new session holding the first `keep` messages of this one (which stays as it is), ready to chat."""
        served = self.served(model)

        def job(ticket: Ticket) -> Iterator[None]:
            loaded = self.store.branch(session_id, keep, served.model, fork=True, progress=False)
            self._remember(loaded.info.id, served.model.fingerprint, loaded.version, loaded.state)
            yield None
            return loaded

        return self._view(self.registry.scheduler.run(job, key=_key(session_id)))

    def edit(self, session_id: int, ordinal: int, message: str, options: TurnOptions | None = None
             ) -> tuple[SessionView, Ticket]:
        """Ask `message` instead of the question at `ordinal`, in a new branch from the turn before it; the
        session itself stays as it is. The branch, and the ticket of its first turn."""
        options = options or TurnOptions()
        self.check_message(message, self.served(options.model))  # refused before any branch is made
        messages = self.store.messages(session_id)
        if not 0 <= ordinal < len(messages) or messages[ordinal].role != "user":
            questions = sum(m.role == "user" for m in messages)
            raise TurnRefused(f"Message {ordinal} is not a question of this session; it has {questions} "
                              "question(s) to edit.")
        view = self.branch(session_id, ordinal, options.model)
        try:
            return view, self.ask(view.info.id, message, options)
        except BaseException:  # refused (a deleted collection, ...): no empty branch is left behind
            self.delete_session(view.info.id)
            raise

    def cancel(self, session_id: int) -> int:
        """Stop the session's running or waiting turns; the number of turns stopped."""
        with self._tickets_lock:
            mine = [t for t in self._tickets if t.key == _key(session_id) and not t.done]
        for ticket in mine:
            ticket.cancel()
        return len(mine)

    def _retrieve(self, info: SessionInfo, message: str, messages: list[ChatMessage], options: TurnOptions
                  ) -> tuple[list[Source], list[Recollection]]:
        sources: list[Source] = []
        if info.collection and options.top_k:
            query = search_query(message, messages)
            try:
                hits = self.retrieval.search(info.collection, query, k=options.top_k)
            except CollectionNotFoundError:
                raise TurnRefused(f"This session searches the collection {info.collection!r}, which was deleted. "
                                  "Pick another collection (or none) for it. Nothing was stored.") from None
            sources = [Source(h.citation, h.path, h.start_line, h.end_line, h.text, h.score, h.language)
                       for h in hits]
        recalled: list[Recollection] = []
        older = len(messages) - RECENT_MESSAGES
        if options.recall_k and older > 0:
            found = self.recall.recall(info.id, message, k=options.recall_k + RECENT_MESSAGES)
            recalled = [Recollection(p.role, p.text) for p in found if p.ordinal < older][: options.recall_k]
        return sources, recalled

    def _start(self, session_id: int, message: str, served: ServedModel, regenerate: bool) -> _Start:
        """Runs on the model queue: the state a turn starts from. Regenerating starts before the last question,
        from the nearest snapshot (the one after the previous turn, normally) and a re-read of what follows."""
        if not regenerate:
            return _Start(self._load(session_id, served), message)
        for _ in range(3):
            version = self.store.get(session_id).version  # first: the messages read next are at least as new
            messages = self.store.messages(session_id)
            question = self._last_question(messages)
            loaded = self.store.state_at(session_id, question, served.model)
            if loaded.version == version:  # else another writer came in between: read again
                return _Start(loaded, messages[question].text, question + 1)
        raise TurnRefused("This session keeps changing elsewhere (another tab or program); regenerate once it is "
                          "quiet. Nothing was stored.")

    def _turn(self, ticket: Ticket, session_id: int, message: str, options: TurnOptions, served: ServedModel,
              started: float, input_notice: str | None = None, *, regenerate: bool = False) -> Iterator[Any]:
        """The turn itself, on the model queue: one yield per bounded piece of work."""
        model = served.model
        start = self._start(session_id, message, served, regenerate)
        loaded, message = start.loaded, start.message
        yield None
        sources, recalled = self._retrieve(loaded.info, message, loaded.messages, options)
        room = None if model.max_context is None else model.max_context - loaded.state.num_tokens - CONTEXT_MARGIN
        budget = options.source_tokens
        prompt = build_prompt(model.tokenizer, message, sources, recalled, loaded.info.collection, budget)
        while room is not None and len(prompt.ids) + options.max_new_tokens > room and prompt.sources:
            budget //= 2  # make room: fewer passages before refusing the turn
            prompt = build_prompt(model.tokenizer, message, sources if budget >= 64 else [], recalled,
                                  loaded.info.collection, max(budget, 64))
        if room is not None and len(prompt.ids) + options.max_new_tokens > room:
            raise TurnRefused(
                f"This conversation has used {loaded.state.num_tokens:,} of the {served.name}'s "
                f"{model.max_context:,}-token context; this question and its answer do not fit. Start a new "
                "session, or lower the answer length. Nothing was stored.")
        yield Retrieved(prompt.sources, recalled, len(prompt.ids))

        fork = loaded.state.clone()
        sampling = options.sampling()
        steps = generation_steps(model, prompt.ids, fork, sampling, ticket, options.stop or None)
        answer, first_token_s = yield from timed_pieces(steps, started)
        last_token_s = time.perf_counter() - started
        del fork

        text = clean_message(answer.text)[0].strip()  # what is stored is exactly what the state reads
        if answer.stop_reason == "cancelled":
            if not text:  # stopped before any word: nothing worth keeping
                return TurnResult(loaded.info, message, "", [], "cancelled", served.label, len(prompt.ids), 0,
                                  first_token_s, time.perf_counter() - started, loaded.state.num_tokens,
                                  loaded.state.nbytes, "Stopped before the answer began; nothing was stored.")
            text += STOPPED_NOTE
        citations = [s.to_dict() for s in prompt.sources]
        if start.replaces is None:
            info, state, notice = self._commit(session_id, loaded, served, message, text, citations)
        else:
            info, state, notice = self._commit_regenerated(session_id, start, served, text, citations)
        notice = " ".join(n for n in (input_notice, loaded.notice, notice) if n) or None
        return TurnResult(info, message, text, prompt.sources, answer.stop_reason, served.label, len(prompt.ids),
                          answer.generated_tokens, first_token_s, time.perf_counter() - started,
                          state.num_tokens, state.nbytes, notice, last_token_s)

    def _commit(self, session_id: int, loaded: LoadedSession, served: ServedModel, message: str, answer: str,
                citations: list[dict[str, Any]]) -> tuple[SessionInfo, Any, str | None]:
        """Read the turn into the persistent state and store both; once more on a fresh load on conflict."""
        model = served.model
        turn = [ChatMessage("user", message), ChatMessage("assistant", answer)]
        notice = None
        for attempt in range(2):
            state = loaded.state
            self._forget_state(session_id)  # the cached state changes now; it is cached again once stored
            feed(model, state, turn)
            try:
                info = self.store.append_turn(session_id, message, answer, state, model_fingerprint=model.fingerprint,
                                              expected_version=loaded.version, citations=citations)
            except (SQLAlchemyError, UnicodeError) as exc:
                log.error("session %d: the turn could not be stored", session_id, exc_info=exc)
                raise TurnNotSaved(
                    f"The answer could not be saved: the database refused it ({_db_reason(exc)}). Nothing of this "
                    "turn was stored; the session is as it was before your message. Send it again.") from None
            except SessionConflictError:
                if attempt:
                    raise
                notice = ("This session changed elsewhere (another tab or program) while answering; the answer "
                          "was added after those changes.")
                log.info("session %d: %s", session_id, notice)
                loaded = self.store.load(session_id, model, progress=False)
                continue
            self._remember(session_id, model.fingerprint, info.version, state)
            self._index_for_recall(session_id)
            return info, state, notice
        raise AssertionError("unreachable")

    def _index_for_recall(self, session_id: int) -> None:
        """Embed the session's new messages for recall now, so that the next question does not wait for it
        (a long imported or reopened session would otherwise be embedded at its first question). The index
        is a cache of the transcript: a failure here is logged, and the next recall tries again."""
        try:
            self.recall.sync(session_id)
        except Exception:
            log.exception("session %d: the recall index could not be brought up to date", session_id)

    def _commit_regenerated(self, session_id: int, start: _Start, served: ServedModel, answer: str,
                            citations: list[dict[str, Any]]) -> tuple[SessionInfo, Any, str | None]:
        """Read the question and the new answer into the state from before the question and store it in place
        of the last answer. If the session changed meanwhile (another tab or program regenerated too), the
        answer is still added when the conversation up to the question is the same; else nothing is stored."""
        model, loaded, ordinal = served.model, start.loaded, start.replaces
        assert ordinal is not None
        state = loaded.state
        feed(model, state, [ChatMessage("user", start.message), ChatMessage("assistant", answer)])
        asked = [(m.role, m.text) for m in loaded.messages] + [("user", start.message)]
        version, notice = loaded.version, None
        self._forget_state(session_id)
        for attempt in range(2):
            try:
                info = self.store.replace_answer(session_id, ordinal, answer, state,
                                                 model_fingerprint=model.fingerprint, expected_version=version,
                                                 citations=citations)
            except (SQLAlchemyError, UnicodeError) as exc:
                log.error("session %d: the regenerated answer could not be stored", session_id, exc_info=exc)
                raise TurnNotSaved(
                    f"The new answer could not be saved: the database refused it ({_db_reason(exc)}). The "
                    "session is as it was before; regenerate again.") from None
            except SessionConflictError:
                version = self.store.get(session_id).version
                now = self.store.messages(session_id)
                same = ([(m.role, m.text) for m in now[:ordinal]] == asked and len(now) == ordinal + 1
                        and now[-1].role == "assistant")
                if attempt or not same:
                    raise TurnRefused("This session changed elsewhere (another tab or program) while the answer "
                                      "was regenerated, and its last question is not the same any more. Nothing "
                                      "was stored; open the session again.") from None
                notice = ("This answer was also regenerated elsewhere meanwhile; both answers are kept as "
                          "alternatives.")
                continue
            self._remember(session_id, model.fingerprint, info.version, state)
            self._index_for_recall(session_id)
            return info, state, notice
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop every turn of this engine (the shared model queue itself stays up)."""
        with self._tickets_lock:
            for ticket in self._tickets:
                ticket.cancel()


def project_docs_folder() -> Path | None:
    """Rillet's repository, when the app runs from a checkout (its README and notes)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "README.md").is_file() else None


def _db_reason(exc: BaseException) -> str:
    """The database's own words, without the SQL and parameters that SQLAlchemy adds."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return lines[0] if lines else type(original).__name__


def _key(session_id: int) -> str:
    return f"session-{session_id}"


def search_query(message: str, messages: list[ChatMessage], short: int = 12) -> str:
    """The retrieval query: the message, plus the previous question when the message is a short follow-up
    ("and its tests?") that means little on its own."""
    if len(message.split()) >= short:
        return message
    previous = next((m.text for m in reversed(messages) if m.role == "user"), None)
    return f"{message}\n{previous[:300]}" if previous else message


def _new_index(dim: int) -> Any:
    from retrieval.vector_index import VectorIndex

    return VectorIndex(dim)


def _load_index(path: Path) -> Any:
    from retrieval.vector_index import VectorIndex

    return VectorIndex.load(path)


__all__ = ["ChatEngine", "Piece", "Retrieved", "SessionNotFoundError", "TurnNotSaved", "TurnOptions", "TurnRefused",
           "TurnResult"]
