"""Vectors stored in SQL by (model, hash of the embedded text): a chunk is embedded once, ever.

This is what makes a changed file cheap (its unchanged chunks are found here), a switch back to an
earlier branch instant, and a lost or stale FAISS file harmless (it is rebuilt from here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from retrieval.catalog import Chunk, Embedding

BATCH = 500


def batched(items: Iterable, size: int = BATCH):  # type: ignore[no-untyped-def]
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


class EmbeddingCache:
    def __init__(self, db: sessionmaker[Session], model: str) -> None:
        self.db, self.model = db, model

    def get(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self.db() as session:
            for batch in batched(set(hashes)):
                rows = session.execute(select(Embedding.text_hash, Embedding.vector).where(
                    Embedding.model == self.model, Embedding.text_hash.in_(batch)))
                found.update((h, np.frombuffer(v, dtype=np.float32)) for h, v in rows)
        return found

    def put(self, vectors: Mapping[str, np.ndarray]) -> None:
        """Store new vectors; a hash already stored (by a concurrent writer) is left as it is."""
        if not vectors:
            return
        with self.db.begin() as session:
            insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
            for batch in batched(vectors.items()):
                rows = [{"model": self.model, "text_hash": h, "vector": np.asarray(v, np.float32).tobytes()}
                        for h, v in batch]
                session.execute(insert(Embedding).on_conflict_do_nothing(), rows)

    def prune(self) -> int:
        """Forget vectors no chunk of any collection uses any more."""
        with self.db.begin() as session:
            result = session.execute(delete(Embedding).where(
                Embedding.model == self.model, Embedding.text_hash.not_in(select(Chunk.text_hash))))
            return result.rowcount or 0
