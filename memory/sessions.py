"""The session store: conversations, their transcripts and saved model states, in SQL.

The transcript is the source of truth; a snapshot is a cache of "the state after message n" that can
be thinned, dropped, or rebuilt by replaying the transcript (memory/transcript.py). Every change to a
transcript happens in one transaction that first claims the session row with
`UPDATE ... WHERE version = expected`: on PostgreSQL that takes the row lock, on SQLite the database
write lock, and a writer whose state was built on an older version gets `SessionConflictError` instead
of appending a turn its state never saw.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine, LargeBinary, Text, cast, delete, func, select, type_coerce, update
from sqlalchemy.orm import Session

from backbone.state import ModelState
from memory.codec import CodecOptions, EncodedState, decode_state, encode_state
from memory.db import make_sessionmaker, utcnow
from memory.errors import InvalidTranscriptError, SessionConflictError, SessionNotFoundError, SnapshotError
from memory.exchange import from_json, to_json, to_markdown
from memory.limits import TITLE_MAX
from memory.models import Alternative, ChatSession, Message, StateSnapshot
from memory.policy import SnapshotPolicy
from memory.records import ROLES, ChatMessage, LoadedSession, SessionInfo, SnapshotInfo, Variants
from memory.text import check_text, one_line
from memory.transcript import ChatModel, feed, replay
from memory.users import SessionOwner

log = logging.getLogger(__name__)
ID_MAX = 2**31 - 1  # sessions.id is an INTEGER column: 32 bits on PostgreSQL (SQLite's 64 bits hold more)


def _title(title: str) -> str:
    title = one_line(title)
    if not title:
        raise InvalidTranscriptError("A session title cannot be empty; type a few words.")
    if len(title) > TITLE_MAX:
        raise InvalidTranscriptError(f"A session title can be at most {TITLE_MAX} characters ({len(title)} given).")
    return title


def _session_id(session_id: Any) -> int:
    """A session id as the databases can look it up; any other value (2**63, -1, "7") names no session."""
    if isinstance(session_id, bool) or not isinstance(session_id, int) or not 1 <= session_id <= ID_MAX:
        raise SessionNotFoundError(session_id)
    return session_id


def _checked(message: ChatMessage) -> ChatMessage:
    if message.role not in ROLES:
        raise InvalidTranscriptError(f"Unknown message role {message.role!r}; use one of {', '.join(ROLES)}.")
    if not isinstance(message.text, str):
        raise InvalidTranscriptError(f"A message's text must be a string, not {type(message.text).__name__}.")
    check_text(message.text, f"A {message.role} message")
    return message


def _json(text: str | None) -> Any:
    """A manifest column's JSON; `SnapshotError` when it is not JSON (a damaged row)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SnapshotError(f"the manifest stored beside the state is not JSON ({exc})") from None


class SessionStore:
    """Create, list, change, load and branch sessions. Safe to share between threads."""

    def __init__(self, engine: Engine, *, codec: CodecOptions | None = None,
                 policy: SnapshotPolicy | None = None) -> None:
        self.engine, self.codec, self.policy = engine, codec or CodecOptions(), policy or SnapshotPolicy()
        self._db = make_sessionmaker(engine)

    # Reading ------------------------------------------------------------------------------------------

    def _infos(self, db: Session, *where: Any, limit: int | None = None, offset: int = 0) -> list[SessionInfo]:
        count = (select(func.count(Message.id)).where(Message.session_id == ChatSession.id)
                 .correlate(ChatSession).scalar_subquery())
        owner = select(SessionOwner.user_id).where(SessionOwner.session_id == ChatSession.id).correlate(ChatSession)
        stmt = (select(ChatSession, count, owner.scalar_subquery()).where(*where)
                .order_by(ChatSession.updated_at.desc(), ChatSession.id.desc()).offset(offset).limit(limit)
                .execution_options(populate_existing=True))
        return [SessionInfo(s.id, s.title, s.collection, s.system_prompt, s.model_fingerprint, s.token_count,
                            s.version, n, s.parent_id, s.branch_point, s.created_at, s.updated_at, owner)
                for s, n, owner in db.execute(stmt)]

    def _info(self, db: Session, session_id: int) -> SessionInfo:
        found = self._infos(db, ChatSession.id == _session_id(session_id))
        if not found:
            raise SessionNotFoundError(session_id)
        return found[0]

    def get(self, session_id: int) -> SessionInfo:
        with self._db() as db:
            return self._info(db, session_id)

    def list_sessions(self, limit: int = 20, offset: int = 0, *, owner_id: int | None = None) -> list[SessionInfo]:
        """Sessions, most recently changed first (with `owner_id`: that user's only)."""
        if limit < 1 or offset < 0:
            raise ValueError("limit must be at least 1 and offset at least 0.")
        where = [] if owner_id is None else [ChatSession.id.in_(
            select(SessionOwner.session_id).where(SessionOwner.user_id == owner_id))]
        with self._db() as db:
            return self._infos(db, *where, limit=limit, offset=offset)

    def messages(self, session_id: int) -> list[ChatMessage]:
        session_id = _session_id(session_id)
        with self._db() as db:
            rows = db.scalars(select(Message).where(Message.session_id == session_id).order_by(Message.ordinal))
            return [ChatMessage(m.role, m.text, m.citations, m.ordinal, m.created_at) for m in rows]

    def variants(self, session_id: int) -> dict[int, Variants]:
        """The places (by ordinal) where more than one answer was written, each with all of its answers."""
        session_id = _session_id(session_id)
        with self._db() as db:
            others = db.scalars(select(Alternative).where(Alternative.session_id == session_id)).all()
            if not others:
                return {}
            chosen = db.scalars(select(Message).where(Message.session_id == session_id,
                                                      Message.ordinal.in_({a.ordinal for a in others}))).all()
            written: dict[int, list[tuple[int, ChatMessage]]] = {}
            for row in [*others, *chosen]:
                message = ChatMessage("assistant", row.text, row.citations, row.ordinal, row.created_at)
                written.setdefault(row.ordinal, []).append((row.variant, message))
            current = {m.ordinal: m.variant for m in chosen}
        result = {}
        for ordinal, answers in written.items():
            answers.sort(key=lambda pair: pair[0])
            order = [variant for variant, _ in answers]
            result[ordinal] = Variants(ordinal, [m for _, m in answers], order.index(current[ordinal]))
        return result

    def snapshots(self, session_id: int) -> list[SnapshotInfo]:
        """Stored states of a session, oldest first, without their blobs."""
        session_id = _session_id(session_id)
        cols = (StateSnapshot.id, StateSnapshot.ordinal, StateSnapshot.model_fingerprint,
                StateSnapshot.format_version, StateSnapshot.codec, StateSnapshot.dtype, StateSnapshot.token_count,
                StateSnapshot.byte_size, StateSnapshot.created_at)
        with self._db() as db:
            rows = db.execute(select(*cols).where(StateSnapshot.session_id == session_id)
                              .order_by(StateSnapshot.ordinal, StateSnapshot.id))
            return [SnapshotInfo(*row) for row in rows]

    # Changing sessions --------------------------------------------------------------------------------

    def create(self, title: str = "New chat", *, collection: str | None = None,
               system_prompt: str | None = None, owner_id: int | None = None) -> SessionInfo:
        with self._db.begin() as db:
            row = ChatSession(title=_title(title), collection=collection, system_prompt=system_prompt or None)
            db.add(row)
            db.flush()
            if owner_id is not None:
                db.add(SessionOwner(session_id=row.id, user_id=owner_id))
            return self._info(db, row.id)

    def rename(self, session_id: int, title: str) -> SessionInfo:
        with self._db.begin() as db:
            self._claim(db, session_id, None, bump=False, title=_title(title))
            return self._info(db, session_id)

    def set_collection(self, session_id: int, collection: str | None) -> SessionInfo:
        """Which collection the session searches; not part of the transcript, so the version stays."""
        with self._db.begin() as db:
            self._claim(db, session_id, None, bump=False, collection=collection or None)
            return self._info(db, session_id)

    def set_owner(self, session_id: int, owner_id: int | None) -> SessionInfo:
        """Give the session to a user (None: to nobody); not part of the transcript, so the version stays."""
        with self._db.begin() as db:
            self._claim(db, session_id, None, bump=False)
            db.execute(delete(SessionOwner).where(SessionOwner.session_id == session_id))
            if owner_id is not None:
                db.add(SessionOwner(session_id=session_id, user_id=owner_id))
            return self._info(db, session_id)

    def delete(self, session_id: int) -> None:
        """Delete a session with its messages and snapshots (its branches stay, as sessions of their own)."""
        session_id = _session_id(session_id)
        with self._db.begin() as db:
            if db.execute(delete(ChatSession).where(ChatSession.id == session_id)).rowcount == 0:
                raise SessionNotFoundError(session_id)

    def _claim(self, db: Session, session_id: int, expected_version: int | None, *, bump: bool = True,
               **values: Any) -> None:
        """Take the session's write lock (and check its version) as the transaction's first statement."""
        session_id = _session_id(session_id)
        stmt = update(ChatSession).where(ChatSession.id == session_id)
        if expected_version is not None:
            stmt = stmt.where(ChatSession.version == expected_version)
        if bump:
            values |= {"version": ChatSession.version + 1, "updated_at": utcnow()}
        else:
            values.setdefault("updated_at", ChatSession.updated_at)
        if db.execute(stmt.values(**values).execution_options(synchronize_session=False)).rowcount == 0:
            if db.get(ChatSession, session_id) is None:
                raise SessionNotFoundError(session_id)
            raise SessionConflictError(session_id, expected_version or 0)

    @staticmethod
    def _next_ordinal(db: Session, session_id: int) -> int:
        last = db.scalar(select(func.max(Message.ordinal)).where(Message.session_id == session_id))
        return 0 if last is None else last + 1

    @staticmethod
    def _add_messages(db: Session, session_id: int, start: int, messages: Sequence[ChatMessage]) -> None:
        db.add_all(Message(session_id=session_id, ordinal=start + i, role=m.role, text=m.text,
                           citations=m.citations, **({"created_at": m.created_at} if m.created_at else {}))
                   for i, m in enumerate(messages))

    def _put_snapshot(self, db: Session, session_id: int, ordinal: int, fingerprint: str, token_count: int,
                      encoded: EncodedState) -> None:
        db.execute(delete(StateSnapshot).where(StateSnapshot.session_id == session_id,
                                               StateSnapshot.model_fingerprint == fingerprint,
                                               StateSnapshot.ordinal == ordinal))
        db.add(StateSnapshot(session_id=session_id, ordinal=ordinal, model_fingerprint=fingerprint,
                             format_version=encoded.format_version, codec=encoded.codec, dtype=encoded.dtype,
                             token_count=token_count, byte_size=encoded.byte_size, checksum=encoded.checksum,
                             manifest=encoded.manifest, blob=encoded.blob))
        db.flush()

    def _prune(self, db: Session, session_id: int, fingerprint: str, *, drop_other_models: bool) -> None:
        rows = db.execute(select(StateSnapshot.id, StateSnapshot.ordinal, StateSnapshot.model_fingerprint)
                          .where(StateSnapshot.session_id == session_id)).all()
        keep = self.policy.keep(o + 1 for _, o, fp in rows if fp == fingerprint)
        doomed = [i for i, o, fp in rows
                  if (fp == fingerprint and o + 1 not in keep) or (fp != fingerprint and drop_other_models)]
        if doomed:
            db.execute(delete(StateSnapshot).where(StateSnapshot.id.in_(doomed)))

    def _encode(self, state: ModelState, fingerprint: str) -> EncodedState:
        return encode_state(state.to_tensors(), state.metadata(), self.codec, model=fingerprint)

    def append_turn(self, session_id: int, user: str, assistant: str, state: ModelState, *,
                    model_fingerprint: str, expected_version: int,
                    citations: list[dict[str, Any]] | None = None) -> SessionInfo:
        """Store a finished turn and the state after it, in one transaction.

        `state` must be the state loaded at `expected_version` advanced over exactly this turn (with
        `memory.transcript.feed`); if the session has changed since, nothing is written and
        `SessionConflictError` asks the caller to reload.
        """
        turn = [ChatMessage("user", user), _checked(ChatMessage("assistant", assistant, citations))]
        _checked(turn[0])
        encoded = self._encode(state, model_fingerprint)  # before the transaction: the lock is held only for writes
        with self._db.begin() as db:
            self._claim(db, session_id, expected_version, token_count=state.num_tokens,
                        model_fingerprint=model_fingerprint)
            start = self._next_ordinal(db, session_id)
            self._add_messages(db, session_id, start, turn)
            self._put_snapshot(db, session_id, start + 1, model_fingerprint, state.num_tokens, encoded)
            self._prune(db, session_id, model_fingerprint, drop_other_models=True)
            return self._info(db, session_id)  # read under the lock: the version that matches `state`

    @staticmethod
    def _last_answer(db: Session, session_id: int, ordinal: int, doing: str) -> Message:
        """The message at `ordinal`, which must be the session's last one and an answer."""
        last = db.scalar(select(Message).where(Message.session_id == session_id)
                         .order_by(Message.ordinal.desc()).limit(1))
        if last is None or last.ordinal != ordinal or last.role != "assistant":
            raise InvalidTranscriptError(f"Only the last answer can be {doing}; message {ordinal} of session "
                                         f"{session_id} is not the last answer.")
        return last

    def replace_answer(self, session_id: int, ordinal: int, answer: str, state: ModelState, *,
                       model_fingerprint: str, expected_version: int,
                       citations: list[dict[str, Any]] | None = None) -> SessionInfo:
        """Store a regenerated last answer and the state after it, in one transaction.

        The answer it replaces stays as an alternative (`variants`). `state` must be the state after the
        messages before `ordinal`, loaded at `expected_version`, advanced over the new answer.
        """
        new = _checked(ChatMessage("assistant", answer, citations))
        encoded = self._encode(state, model_fingerprint)
        with self._db.begin() as db:
            self._claim(db, session_id, expected_version, token_count=state.num_tokens,
                        model_fingerprint=model_fingerprint)
            row = self._last_answer(db, session_id, ordinal, "regenerated")
            written = db.scalar(select(func.max(Alternative.variant))
                                .where(Alternative.session_id == session_id, Alternative.ordinal == ordinal))
            db.add(Alternative(session_id=session_id, ordinal=ordinal, variant=row.variant, text=row.text,
                               citations=row.citations, created_at=row.created_at))
            row.text, row.citations, row.created_at = new.text, new.citations, utcnow()
            row.variant = max(row.variant, -1 if written is None else written) + 1
            self._put_snapshot(db, session_id, ordinal, model_fingerprint, state.num_tokens, encoded)
            self._prune(db, session_id, model_fingerprint, drop_other_models=True)
            return self._info(db, session_id)

    def choose(self, session_id: int, ordinal: int, variant: int, model: ChatModel, *,
               progress: bool = False) -> LoadedSession:
        """Make answer `variant` (an index into `variants(...)[ordinal].answers`) the last answer again.

        The state comes from the nearest snapshot before the answer plus a re-read of the chosen text."""
        info = self.get(session_id)
        messages = self.messages(session_id)
        places = self.variants(session_id)
        if ordinal not in places or not 0 <= variant < len(places[ordinal].answers):
            raise InvalidTranscriptError(f"Message {ordinal} of session {session_id} has no answer {variant + 1}.")
        if ordinal != len(messages) - 1:
            raise InvalidTranscriptError("Only the last answer's alternatives can be chosen; a later turn was "
                                         "written from the answer there now. Branch from that turn instead.")
        place = places[ordinal]
        if variant == place.chosen:
            return self.load(session_id, model, progress=progress)
        picked = place.answers[variant]
        before = messages[:ordinal]
        state, fed, restored, notice, _ = self._rebuild(session_id, info, before, model, progress,
                                                        explain_missing=False)
        fed += feed(model, state, [picked])
        encoded = self._encode(state, model.fingerprint)
        with self._db.begin() as db:
            self._claim(db, session_id, info.version, token_count=state.num_tokens,
                        model_fingerprint=model.fingerprint)
            row = self._last_answer(db, session_id, ordinal, "changed")
            alt = db.scalar(select(Alternative).where(Alternative.session_id == session_id,
                                                      Alternative.ordinal == ordinal,
                                                      Alternative.variant == variant))
            assert alt is not None  # under the version claimed above, `places` is current
            (row.text, row.citations, row.created_at, row.variant,
             alt.text, alt.citations, alt.created_at, alt.variant) = (
                alt.text, alt.citations, alt.created_at, alt.variant,
                row.text, row.citations, row.created_at, row.variant)
            self._put_snapshot(db, session_id, ordinal, model.fingerprint, state.num_tokens, encoded)
            self._prune(db, session_id, model.fingerprint, drop_other_models=True)
            result = self._info(db, session_id)
        return LoadedSession(result, self.messages(session_id), state, fed, notice, restored)

    def append_messages(self, session_id: int, messages: Sequence[ChatMessage], *,
                        expected_version: int | None = None) -> SessionInfo:
        """Append messages without a state (the next `load` re-reads them); for integrations."""
        checked = [_checked(m) for m in messages]
        with self._db.begin() as db:
            self._claim(db, session_id, expected_version)
            self._add_messages(db, session_id, self._next_ordinal(db, session_id), checked)
            db.flush()
            return self._info(db, session_id)

    def clear(self, session_id: int) -> SessionInfo:
        """Remove every message and state of a session, keeping the session itself."""
        with self._db.begin() as db:
            self._claim(db, session_id, None, token_count=0)
            db.execute(delete(Message).where(Message.session_id == session_id))
            db.execute(delete(Alternative).where(Alternative.session_id == session_id))
            db.execute(delete(StateSnapshot).where(StateSnapshot.session_id == session_id))
            return self._info(db, session_id)

    # States -------------------------------------------------------------------------------------------

    def _restore(self, session_id: int, model: ChatModel, last_ordinal: int
                 ) -> tuple[ModelState | None, int | None, list[str], list[int]]:
        """The newest usable snapshot of this model at or before `last_ordinal`.

        Returns (state, its ordinal, problems met, ids of snapshots that failed to load).
        """
        problems: list[str] = []
        bad: list[int] = []
        with self._db() as db:
            # The blob and the manifest are read as raw bytes and text and checked here: a damaged row may
            # hold text in the blob column (SQLite keeps any type) or a manifest that is not JSON, and
            # the driver would fail on those before any check could call the snapshot damaged.
            rows = db.execute(
                select(StateSnapshot.id, StateSnapshot.ordinal, StateSnapshot.format_version, StateSnapshot.codec,
                       StateSnapshot.checksum, type_coerce(cast(StateSnapshot.manifest, Text), Text),
                       StateSnapshot.byte_size)
                .where(StateSnapshot.session_id == session_id, StateSnapshot.model_fingerprint == model.fingerprint,
                       StateSnapshot.ordinal <= last_ordinal)
                .order_by(StateSnapshot.ordinal.desc())).all()
            for snap_id, ordinal, version, codec, checksum, manifest, byte_size in rows:
                blob = db.scalar(select(cast(StateSnapshot.blob, LargeBinary)).where(StateSnapshot.id == snap_id))
                if blob is None:  # pruned meanwhile by another writer
                    continue
                try:
                    tensors, metadata = decode_state(blob, checksum=checksum, codec=codec, format_version=version,
                                                     manifest=_json(manifest), model=model.fingerprint,
                                                     byte_size=byte_size)
                    return model.state_from_tensors(tensors, metadata), ordinal, problems, bad
                except Exception as exc:  # whatever is wrong with one snapshot, the transcript rebuilds it
                    log.warning("Snapshot %d of session %d (after message %d) is unusable: %s",
                                snap_id, session_id, ordinal, exc)
                    problems.append(str(exc) if isinstance(exc, ValueError | RuntimeError)
                                    else f"{type(exc).__name__}: {exc}")
                    bad.append(snap_id)
        return None, None, problems, bad

    def _other_models(self, session_id: int, fingerprint: str) -> bool:
        with self._db() as db:
            return db.scalar(select(func.count(StateSnapshot.id)).where(
                StateSnapshot.session_id == session_id, StateSnapshot.model_fingerprint != fingerprint)) > 0

    def _rebuild(self, session_id: int, info: SessionInfo, messages: list[ChatMessage], model: ChatModel,
                 progress: bool, *, explain_missing: bool = True
                 ) -> tuple[ModelState, int, int | None, str | None, list[int]]:
        """State after `messages` from the best snapshot plus replay of what follows it."""
        state, restored, problems, bad = self._restore(session_id, model, len(messages) - 1)
        if state is not None:
            state, fed = replay(model, messages[restored + 1 :], state=state, progress=progress)
        else:
            state, fed = replay(model, messages, info.system_prompt, progress=progress)
        notice = None
        if problems:
            notice = (f"The saved memory of this session could not be used ({problems[0]}); it was rebuilt "
                      f"by re-reading {fed:,} tokens of the transcript.")
        elif restored is None and messages and self._other_models(session_id, model.fingerprint):
            notice = ("This session was saved with a different model; its memory was rebuilt for the current "
                      f"model by re-reading {fed:,} tokens of the transcript.")
        elif restored is None and messages and explain_missing:
            notice = f"This session had no saved memory yet; it was built by reading {fed:,} tokens."
        if notice:
            log.warning("Session %d: %s", session_id, notice)
        return state, fed, restored, notice, bad

    def load(self, session_id: int, model: ChatModel, *, progress: bool = True) -> LoadedSession:
        """The transcript and the state after its last message, ready to continue the chat.

        Uses the newest snapshot made by this model; a damaged one, or none at all (a different model,
        an import), means re-reading the transcript, after which the rebuilt state is saved.
        """
        # The version is read first: the messages read after it can only be newer, and then appending
        # with this version is refused, never accepted over a turn the state lacks.
        info = self.get(session_id)
        messages = self.messages(session_id)
        state, fed, restored, notice, bad = self._rebuild(session_id, info, messages, model, progress)
        if messages and restored != len(messages) - 1:
            self._save_rebuilt(session_id, info.version, len(messages) - 1, model.fingerprint, state, bad)
        elif bad:
            with self._db.begin() as db:
                db.execute(delete(StateSnapshot).where(StateSnapshot.id.in_(bad)))
        return LoadedSession(replace(info, token_count=state.num_tokens), messages, state, fed, notice, restored)

    def _save_rebuilt(self, session_id: int, version: int, ordinal: int, fingerprint: str, state: ModelState,
                      bad: list[int]) -> None:
        """Store a rebuilt state, unless the session moved on meanwhile (then it is simply not cached)."""
        encoded = self._encode(state, fingerprint)
        with self._db.begin() as db:
            try:
                self._claim(db, session_id, version, bump=False, model_fingerprint=fingerprint,
                            token_count=state.num_tokens)
            except SessionConflictError:
                return
            if bad:
                db.execute(delete(StateSnapshot).where(StateSnapshot.id.in_(bad)))
            self._put_snapshot(db, session_id, ordinal, fingerprint, state.num_tokens, encoded)
            self._prune(db, session_id, fingerprint, drop_other_models=False)

    def branch(self, session_id: int, keep: int, model: ChatModel, *, fork: bool = True,
               progress: bool = True) -> LoadedSession:
        """Go back to just after the first `keep` messages, to regenerate or edit what came next.

        The state comes from the nearest snapshot at or before that point plus a replay of only the
        messages in between. With `fork`, the result is a new session (`parent_id` = this one) and this
        one stays as it was; without, the later messages and states of this session are deleted.
        """
        info, messages = self._first_messages(session_id, keep)
        state, fed, restored, notice, bad = self._rebuild(session_id, info, messages, model, progress,
                                                          explain_missing=False)

        needs_snapshot = keep > 0 and restored != keep - 1
        encoded = self._encode(state, model.fingerprint) if keep > 0 and (fork or needs_snapshot) else None
        with self._db.begin() as db:
            if fork:
                self._claim(db, session_id, info.version, bump=False)  # the parent must still match `messages`
                row = ChatSession(title=_title(f"{info.title} (branch)"[:TITLE_MAX]), collection=info.collection,
                                  system_prompt=info.system_prompt, parent_id=session_id, branch_point=keep,
                                  model_fingerprint=model.fingerprint, token_count=state.num_tokens)
                db.add(row)
                db.flush()
                target = row.id
                if info.owner_id is not None:  # a branch belongs to whoever owns the session
                    db.add(SessionOwner(session_id=target, user_id=info.owner_id))
                self._add_messages(db, target, 0, messages)
                self._copy_alternatives(db, session_id, target, keep)
            else:
                target = session_id
                self._claim(db, session_id, info.version, token_count=state.num_tokens)
                db.execute(delete(Message).where(Message.session_id == session_id, Message.ordinal >= keep))
                db.execute(delete(Alternative).where(Alternative.session_id == session_id,
                                                     Alternative.ordinal >= keep))
                db.execute(delete(StateSnapshot).where(StateSnapshot.session_id == session_id,
                                                       StateSnapshot.ordinal >= keep))
            if bad:
                db.execute(delete(StateSnapshot).where(StateSnapshot.id.in_(bad)))
            if encoded is not None:
                self._put_snapshot(db, target, keep - 1, model.fingerprint, state.num_tokens, encoded)
            result = self._info(db, target)
        return LoadedSession(result, messages, state, fed, notice, restored)

    @staticmethod
    def _copy_alternatives(db: Session, source: int, target: int, keep: int) -> None:
        """A branch keeps the answers written before its branch point, and which of them was chosen."""
        db.flush()
        chosen = dict(db.execute(select(Message.ordinal, Message.variant)
                                 .where(Message.session_id == source, Message.ordinal < keep)).all())
        for ordinal, variant in chosen.items():
            if variant:  # the copied message was added as variant 0
                db.execute(update(Message).where(Message.session_id == target, Message.ordinal == ordinal)
                           .values(variant=variant))
        rows = db.scalars(select(Alternative).where(Alternative.session_id == source, Alternative.ordinal < keep))
        db.add_all(Alternative(session_id=target, ordinal=a.ordinal, variant=a.variant, text=a.text,
                               citations=a.citations, created_at=a.created_at) for a in rows.all())

    def _first_messages(self, session_id: int, keep: int) -> tuple[SessionInfo, list[ChatMessage]]:
        """The session and its first `keep` messages; an error when it has fewer."""
        info = self.get(session_id)
        if not 0 <= keep <= info.message_count:
            raise InvalidTranscriptError(f"Cannot go back to message {keep}: session {session_id} has "
                                         f"{info.message_count} messages.")
        return info, self.messages(session_id)[:keep]

    def state_at(self, session_id: int, keep: int, model: ChatModel, *, progress: bool = False) -> LoadedSession:
        """The state after the first `keep` messages (nearest snapshot plus a re-read of the rest), with those
        messages; nothing is written. What regenerating an answer starts from."""
        info, messages = self._first_messages(session_id, keep)
        state, fed, restored, notice, _ = self._rebuild(session_id, info, messages, model, progress,
                                                        explain_missing=False)
        return LoadedSession(info, messages, state, fed, notice, restored)

    # Exchange -----------------------------------------------------------------------------------------

    def export_json(self, session_id: int) -> dict[str, Any]:
        return to_json(self.get(session_id), self.messages(session_id))

    def export_markdown(self, session_id: int) -> str:
        return to_markdown(self.get(session_id), self.messages(session_id))

    def import_json(self, data: dict[str, Any] | str | bytes, *, system_prompt: str | None = None) -> SessionInfo:
        """A new session holding an exported transcript; its state is built on first load.

        The file is held to the live chat's limits (`memory.exchange.from_json`). Its system prompt is not
        taken: hidden instructions to the model do not come in with a file. The session gets
        `system_prompt`, the installation's own (None: none).
        """
        exported = from_json(data)
        messages = [ChatMessage(m.role, m.text, m.citations, created_at=m.created_at) for m in exported.messages]
        with self._db.begin() as db:
            collection = (exported.collection or "").strip() or None
            row = ChatSession(title=_title(exported.title), collection=collection, system_prompt=system_prompt or None,
                              **({"created_at": exported.created_at} if exported.created_at else {}))
            db.add(row)
            db.flush()
            self._add_messages(db, row.id, 0, messages)
            db.flush()
            return self._info(db, row.id)
