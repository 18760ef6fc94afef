"""A collection's vectors in PostgreSQL with pgvector: stored once for every replica, not in each one's RAM.

The same interface as `VectorIndex` (FAISS), so `CollectionStore` keeps the catalog, the embedding cache
and this table in line exactly as it does a FAISS file: chunk ids are the keys, `add` and `remove` follow
each catalog change, and a comparison of ids mends what a crash left out. Each collection has a table of
its own, `rillet_vectors_<collection id>`, with an HNSW index over cosine distance, so a query never
competes with other collections' vectors for the index's candidates. A search restricted to some chunks
(a path or language filter) scans those rows exactly instead, since HNSW filters only after it searched.

The table is made on first use (it depends on the embedding's dimension, which the schema does not know),
under an advisory lock so that replicas starting together make it once.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
from pgvector.sqlalchemy import Vector
from sqlalchemy import BigInteger, Column, Engine, MetaData, Table, bindparam, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from backbone.errors import SetupError
from retrieval.embedding_cache import batched

log = logging.getLogger(__name__)
# Candidates HNSW keeps while searching (pgvector's default is 40): more than a search's hits, for recall.
EF_SEARCH_MIN = 100
WRITE_BATCH = 1000


def table_name(collection_id: int) -> str:
    return f"rillet_vectors_{int(collection_id)}"


def ensure_pgvector(engine: Engine) -> None:
    """The vector extension in this database, or a `SetupError` saying how to get it."""
    if engine.dialect.name != "postgresql":
        raise SetupError("The pgvector store keeps vectors in PostgreSQL: set RILLET_DATABASE_URL to a PostgreSQL "
                         "database with the pgvector extension, or RILLET_VECTOR_STORE=faiss.")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    except DBAPIError as exc:
        raise SetupError("The pgvector store needs PostgreSQL's `vector` extension, which this server lacks "
                         f"({str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}): install pgvector (the "
                         "pgvector/pgvector image has it) or set RILLET_VECTOR_STORE=faiss.") from None


def drop_table(db: sessionmaker[Session], collection_id: int) -> None:
    """Remove a deleted collection's table."""
    with db.begin() as session:
        session.execute(text(f'DROP TABLE IF EXISTS "{table_name(collection_id)}"'))


class PgVectorIndex:
    def __init__(self, db: sessionmaker[Session], collection_id: int, dim: int) -> None:
        self.db, self.dim = db, dim
        self.table = Table(table_name(collection_id), MetaData(),
                           Column("chunk_id", BigInteger, primary_key=True),
                           Column("embedding", Vector(dim), nullable=False))
        self._create()

    def _create(self) -> None:
        name = self.table.name
        with self.db.begin() as session:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(name.encode())})
            self.table.create(session.connection(), checkfirst=True)
            session.execute(text(f'CREATE INDEX IF NOT EXISTS "{name}_hnsw" ON "{name}" '
                                 "USING hnsw (embedding vector_cosine_ops)"))

    def __len__(self) -> int:
        with self.db() as session:
            return int(session.scalar(select(func.count()).select_from(self.table)) or 0)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected {len(ids)} vectors of {self.dim} dimensions, got {vectors.shape}")
        rows = [{"chunk_id": int(i), "embedding": v} for i, v in zip(ids, vectors, strict=True)]
        stmt = insert(self.table)
        stmt = stmt.on_conflict_do_update(index_elements=["chunk_id"], set_={"embedding": stmt.excluded.embedding})
        with self.db.begin() as session:
            for batch in batched(rows, WRITE_BATCH):
                session.execute(stmt, batch)

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        removed = 0
        with self.db.begin() as session:
            for batch in batched([int(i) for i in ids], WRITE_BATCH):
                removed += session.execute(delete(self.table).where(self.table.c.chunk_id.in_(batch))).rowcount or 0
        return removed

    def ids(self) -> np.ndarray:
        with self.db() as session:
            return np.fromiter(session.scalars(select(self.table.c.chunk_id)), dtype=np.int64)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (len(queries), k), cosine similarity as the score; missing hits have id -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        scores = np.full((len(queries), max(k, 0)), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), max(k, 0)), -1, dtype=np.int64)
        if k <= 0:
            return scores, ids
        distance = self.table.c.embedding.cosine_distance(bindparam("query", type_=Vector(self.dim)))
        stmt = select(self.table.c.chunk_id, distance).order_by(distance).limit(k)
        if allowed is not None:
            stmt = stmt.where(self.table.c.chunk_id.in_([int(i) for i in allowed]))
        with self.db.begin() as session:
            if allowed is None:
                session.execute(text(f"SET LOCAL hnsw.ef_search = {max(EF_SEARCH_MIN, 2 * int(k))}"))
            else:
                session.execute(text("SET LOCAL enable_indexscan = off"))  # exact: scan the allowed rows only
            for row, query in enumerate(queries):
                found = session.execute(stmt, {"query": query}).all()
                for col, (chunk_id, dist) in enumerate(found):
                    ids[row, col], scores[row, col] = chunk_id, 1.0 - dist
        return scores, ids

    def save(self, path: Path) -> None:
        """Nothing to write: every change is committed as it is made."""
