"""Exact recall over a session's earlier turns, with the real embedding model and FAISS index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backbone.generate import LanguageModel
from memory.recall import PASSAGE_WORDS, SessionRecall, passages
from memory.records import ChatMessage
from memory.sessions import SessionStore
from retrieval.embedder import SentenceEmbedder
from retrieval.vector_index import VectorIndex

FILLER = [("How do I reverse a list in Python?", "Use reversed(xs) or xs[::-1]."),
          ("Recommend a book about databases.", "Designing Data-Intensive Applications."),
          ("What's the boiling point of water?", "100 degrees Celsius at sea level."),
          ("Tell me a joke about cats.", "Cats don't tell jokes; they knock them off the table."),
          ("How far is the Moon?", "About 384,400 km on average.")]


class CountingEmbedder:
    """The real embedder, counting what it is asked to embed (to prove only new text is embedded)."""

    def __init__(self, inner: SentenceEmbedder) -> None:
        self.inner, self.texts = inner, 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def sentence_embedder() -> SentenceEmbedder:
    return SentenceEmbedder(device="cpu")


@pytest.fixture
def recall(store: SessionStore, sentence_embedder: SentenceEmbedder, tmp_path: Path) -> SessionRecall:
    return SessionRecall(store, CountingEmbedder(sentence_embedder), tmp_path / "recall",
                         new_index=VectorIndex, load_index=VectorIndex.load)


def fill(store: SessionStore, session_id: int, turns: list[tuple[str, str]]) -> None:
    store.append_messages(session_id, [ChatMessage(r, t) for pair in turns for r, t in
                                       zip(("user", "assistant"), pair, strict=True)])


def test_passages_cover_long_messages_within_the_embedder_window() -> None:
    words = [f"w{i}" for i in range(1000)]
    parts = passages(" ".join(words))
    assert all(len(p.split()) <= PASSAGE_WORDS for p in parts)
    covered = {w for p in parts for w in p.split()}
    assert covered == set(words)
    assert passages("   ") == [] and passages("one two") == ["one two"]


def test_recalls_the_exact_earlier_passage(store: SessionStore, recall: SessionRecall) -> None:
    session_id = store.create("long chat").id
    fill(store, session_id, FILLER[:2])
    fill(store, session_id, [("Remember this: my locker combination is 31-07-22.", "Got it.")])
    fill(store, session_id, FILLER[2:])
    found = recall.recall(session_id, "what was the locker combination I gave you?", k=3)
    assert "my locker combination is 31-07-22" in found[0].text
    assert found[0].ordinal == 4 and found[0].role == "user"
    assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)


def test_only_new_or_changed_messages_are_embedded(store: SessionStore, recall: SessionRecall,
                                                   model: LanguageModel) -> None:
    session_id = store.create("incremental").id
    fill(store, session_id, FILLER[:2])
    assert recall.sync(session_id) == 4
    embedded = recall.embedder.texts
    assert recall.sync(session_id) == 0 and recall.embedder.texts == embedded
    fill(store, session_id, FILLER[2:3])
    assert recall.sync(session_id) == 2
    # Rewind in place past the secret, then say something else: the index forgets what was cut.
    fill(store, session_id, [("The vault code is 9931.", "Noted.")])
    assert "9931" in recall.recall(session_id, "vault code", k=1)[0].text
    store.branch(session_id, 6, model, fork=False, progress=False)
    fill(store, session_id, [("I like green tea.", "Green tea is nice.")])
    assert recall.sync(session_id) == 2
    texts = [p.text for p in recall.recall(session_id, "vault code", k=10)]
    assert not any("9931" in t for t in texts) and any("green tea" in t for t in texts)


def test_a_damaged_index_is_rebuilt_from_the_transcript(store: SessionStore, recall: SessionRecall) -> None:
    session_id = store.create("damaged").id
    fill(store, session_id, FILLER)
    recall.sync(session_id)
    index_path = next(recall.folder.glob(f"session-{session_id}.index"))
    index_path.write_bytes(b"garbage")
    assert {p.ordinal for p in recall.recall(session_id, "distance to the Moon", k=2)} == {8, 9}
    recall.forget(session_id)
    assert not list(recall.folder.glob(f"session-{session_id}.*"))
    assert {p.ordinal for p in recall.recall(session_id, "distance to the Moon", k=2)} == {8, 9}
