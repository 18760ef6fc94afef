"""Exact recall of earlier turns: a per-session vector index over every stored message.

A recurrent state is a lossy summary: it may know that a number was given, not which. So each message
is also split into short passages, embedded and kept in a vector index of its own session, and the chat
engine retrieves passages verbatim ("what was the number I gave you yesterday?").

The embedder and the vector index are injected (the application passes retrieval's), so this module
depends only on the two small protocols below. The index is a cache of the transcript: `sync` compares
it with the messages in the database (by ordinal and text hash) and embeds only what is new or changed,
so a crash, a branch or an edit can never leave it answering with text the session no longer has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from memory.records import ChatMessage
from memory.sessions import SessionStore

log = logging.getLogger(__name__)
PASSAGE_WORDS = 120
OVERLAP_WORDS = 30
PASSAGES_PER_MESSAGE = 1 << 20  # vector id = ordinal * PASSAGES_PER_MESSAGE + passage number


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised so inner product is cosine similarity."""
        ...


class VectorIndex(Protocol):
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (len(vectors), k); missing hits have id -1, as in FAISS."""
        ...

    def remove(self, ids: np.ndarray) -> int: ...

    def save(self, path: Path) -> None: ...


@dataclass(frozen=True)
class RecalledPassage:
    ordinal: int
    role: str
    text: str
    score: float
    created_at: datetime | None


def passages(text: str) -> list[str]:
    """Overlapping word windows short enough for a sentence embedder (it truncates past ~256 tokens)."""
    words = text.split()
    if len(words) <= PASSAGE_WORDS:
        return [" ".join(words)] if words else []
    step = PASSAGE_WORDS - OVERLAP_WORDS
    return [" ".join(words[i : i + PASSAGE_WORDS]) for i in range(0, len(words) - OVERLAP_WORDS, step)]


def _digest(message: ChatMessage) -> str:
    return hashlib.sha256(f"{message.role}\n{message.text}".encode()).hexdigest()[:16]


def recall_paths(folder: Path, session_id: int) -> tuple[Path, Path]:
    """The files of one session's recall index: the vectors, and the digests of what they hold."""
    return Path(folder) / f"session-{session_id}.index", Path(folder) / f"session-{session_id}.json"


class SessionRecall:
    """Keeps one vector index per session in `folder` and searches it."""

    def __init__(self, store: SessionStore, embedder: Embedder, folder: Path, *,
                 new_index: Callable[[int], VectorIndex], load_index: Callable[[Path], VectorIndex]) -> None:
        self.store, self.embedder, self.folder = store, embedder, Path(folder)
        self.new_index, self.load_index = new_index, load_index

    def _paths(self, session_id: int) -> tuple[Path, Path]:
        return recall_paths(self.folder, session_id)

    def _open(self, session_id: int) -> tuple[VectorIndex | None, dict[str, tuple[str, int]]]:
        """The index and, per indexed ordinal, (text digest, passage count)."""
        index_path, digest_path = self._paths(session_id)
        if not (index_path.exists() and digest_path.exists()):
            return None, {}
        try:
            return self.load_index(index_path), json.loads(digest_path.read_text())
        except Exception as exc:  # a damaged cache is rebuilt, never fatal
            log.warning("Recall index of session %d is unreadable (%s); rebuilding it.", session_id, exc)
            return None, {}

    def sync(self, session_id: int) -> int:
        """Bring the session's index in line with its transcript; return how many messages were embedded."""
        messages = self.store.messages(session_id)
        index, indexed = self._open(session_id)
        wanted = {str(m.ordinal): _digest(m) for m in messages}
        stale = {o: n for o, (d, n) in indexed.items() if wanted.get(o) != d}
        fresh = [m for m in messages if str(m.ordinal) not in indexed or str(m.ordinal) in stale]
        if index is not None and not stale and not fresh:
            return 0
        if index is not None and stale:
            index.remove(np.concatenate([self._ids(int(o), n) for o, n in stale.items()]))
        texts, ids, done = [], [], {o: e for o, e in indexed.items() if o not in stale}
        for m in fresh:
            parts = passages(m.text)
            texts += [f"{m.role}: {p}" for p in parts]
            ids.append(self._ids(m.ordinal, len(parts)))
            done[str(m.ordinal)] = (wanted[str(m.ordinal)], len(parts))
        if texts:
            vectors = np.ascontiguousarray(self.embedder.embed(texts), dtype=np.float32)
            if index is None:
                index = self.new_index(vectors.shape[1])
            index.add(np.concatenate(ids), vectors)
        self._write(session_id, index, done)
        return len(fresh)

    @staticmethod
    def _ids(ordinal: int, count: int) -> np.ndarray:
        return np.arange(count, dtype=np.int64) + ordinal * PASSAGES_PER_MESSAGE

    def _write(self, session_id: int, index: VectorIndex | None, digests: dict[str, tuple[str, int]]) -> None:
        index_path, digest_path = self._paths(session_id)
        if index is None:  # nothing embedded yet (only empty messages)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        index.save(index_path)
        tmp = digest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(digests))
        os.replace(tmp, digest_path)  # the digests last: a crash before this line only means re-embedding

    def recall(self, session_id: int, query: str, k: int = 4) -> list[RecalledPassage]:
        """The `k` passages of the session closest to `query`, best first."""
        self.sync(session_id)
        index, _ = self._open(session_id)
        if index is None or not query.strip():
            return []
        by_ordinal = {m.ordinal: m for m in self.store.messages(session_id)}
        scores, ids = index.search(np.ascontiguousarray(self.embedder.embed([query]), dtype=np.float32), k)
        found = []
        for score, vid in zip(scores[0], ids[0], strict=True):
            ordinal, part = divmod(int(vid), PASSAGES_PER_MESSAGE)
            message = by_ordinal.get(ordinal)
            if vid >= 0 and message is not None:
                found.append(RecalledPassage(ordinal, message.role, passages(message.text)[part], float(score),
                                             message.created_at))
        return found

    def forget(self, session_id: int) -> None:
        """Delete the session's index (after the session itself is deleted)."""
        for path in self._paths(session_id):
            path.unlink(missing_ok=True)
