"""The FAISS and BM25 files of one collection, always brought in line with the catalog before use.

The catalog commits first and the index files follow, so after a crash they may lag behind. On every
load the set of vector ids is compared with the catalog's chunk ids: extra ids are removed, missing ones
are added from the embedding cache (embedded afresh only if the cache lost them). Chunk rows are never
updated in place and their ids never reused, so equal id sets mean equal contents, for BM25 as well.

Other processes change the catalog too (another replica on the same database, `rillet index` beside the
server): before each search `catch_up` is given the collection's generation, read with its row, and
when it moved since this store last matched the catalog the same comparison runs again, so a search
never answers from an index older than the generation it read.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session, sessionmaker

from backbone.errors import UserError
from retrieval.bm25 import BM25Index
from retrieval.catalog import Chunk, File
from retrieval.embedder import Embedder
from retrieval.embedding_cache import EmbeddingCache, batched
from retrieval.vector_index import VectorIndex

log = logging.getLogger(__name__)
WRITER_LOCK = 0x52494C  # advisory lock class of collection writers on PostgreSQL (the collection id is the key)
EMBED_SLICE = 256  # texts per embedding call (longest first), so progress moves while a pool embeds


class CollectionBusyError(UserError, RuntimeError):
    """Another indexing run (this process or another) holds the collection; wait for it."""


def embed_text(header: str | None, text: str) -> str:
    return f"{header}\n{text}" if header else text


class CollectionStore:
    def __init__(self, folder: Path, collection_id: int, db: sessionmaker[Session], embedder: Embedder,
                 cache: EmbeddingCache | None, *, new_vectors: Callable[[int], VectorIndex] | None = None) -> None:
        """`new_vectors(dim)`: an empty vector index of another kind than a FAISS file (pgvector's table);
        such an index writes every change through, so there is no file to load or save."""
        self.folder, self.collection_id, self.db = Path(folder), collection_id, db
        self.embedder, self.cache = embedder, cache
        self.new_vectors = new_vectors or VectorIndex
        self.vector_file = new_vectors is None
        self.vectors_path, self.bm25_path = self.folder / "vectors.faiss", self.folder / "bm25"
        self.lock = threading.RLock()  # held briefly, around reads and changes of the in-memory indexes
        self.write_lock = threading.Lock()  # held for a whole indexing run
        self._vectors: VectorIndex | None = None
        self._vectors_stamp: tuple[int, int] | None = None
        self._bm25: BM25Index | None = None
        self._bm25_stamp: tuple[int, int] | None = None
        self._generation: int | None = None  # the catalog generation both indexes were last matched with

    # --- catalog ---------------------------------------------------------------------------------
    def catalog_ids(self) -> np.ndarray:
        with self.db() as session:
            ids = session.scalars(select(Chunk.id).join(File).where(File.collection_id == self.collection_id))
            return np.sort(np.fromiter(ids, dtype=np.int64))

    def chunk_texts(self, ids: np.ndarray | None = None) -> list[tuple[int, str, str]]:
        """(id, text hash, embedded text) of the given chunks, or of all of them."""
        query = select(Chunk.id, Chunk.text_hash, Chunk.header, Chunk.text).join(File).where(
            File.collection_id == self.collection_id)
        with self.db() as session:
            if ids is None:
                rows = session.execute(query.order_by(Chunk.id)).all()
            else:
                rows = [r for batch in batched(ids.tolist()) for r in session.execute(query.where(Chunk.id.in_(batch)))]
        return [(i, h, embed_text(header, text)) for i, h, header, text in rows]

    @staticmethod
    def drop_chunks(session: Session, file_ids: Sequence[int], *, files: bool) -> list[int]:
        """In the caller's transaction: delete these files' chunks (`files=False`: the file rows stay, to be
        updated) or the files themselves with their chunks (`files=True`). Returns the chunk ids, which
        `change_vectors` then takes out of the vector index once the transaction committed."""
        chunk_ids = [i for b in batched(list(file_ids))
                     for i in session.scalars(select(Chunk.id).where(Chunk.file_id.in_(b)))]
        if files:
            for b in batched(list(file_ids)):
                session.execute(delete(File).where(File.id.in_(b)))  # their chunks go with them (ON DELETE CASCADE)
        else:
            for b in batched(chunk_ids):
                session.execute(delete(Chunk).where(Chunk.id.in_(b)))
        return chunk_ids

    def change_vectors(self, removed: Sequence[int], added: Sequence[int] = (), vectors: np.ndarray | None = None,
                       *, save: bool = False) -> None:
        """The catalog change that `drop_chunks` (and inserting chunks) made, applied to the vector index
        after its transaction committed: the catalog is the truth, and a crash between the two is mended by
        `vectors()` on the next load. `save`: write the index now, and let the keyword index reload."""
        with self.lock:
            index = self.vectors()
            # `added` too: a `catch_up` between the commit and this call may have added them already.
            index.remove(np.array([*removed, *added], dtype=np.int64))
            if len(added):
                index.add(np.array(added, dtype=np.int64), vectors)
            if save:
                self.save_vectors()
                self.forget_bm25()

    # --- vectors ---------------------------------------------------------------------------------
    def vectors(self) -> VectorIndex:
        """The collection's vector index, loaded (again if another process rewrote it) and repaired."""
        with self.lock:
            stamp = _stamp(self.vectors_path) if self.vector_file else None
            if self._vectors is None or stamp != self._vectors_stamp:
                index = None
                if stamp is not None:
                    try:
                        index = VectorIndex.load(self.vectors_path)
                    except RuntimeError as exc:
                        log.warning("Vector index %s is unreadable (%s); rebuilding it.", self.vectors_path, exc)
                if index is None or index.dim != self._dim():
                    index = self.new_vectors(self._dim())
                self._vectors, self._vectors_stamp = index, stamp
                if self._repair(index, self.catalog_ids()):
                    if stamp is not None:  # a file lagging behind; no file at all is a new replica or store
                        log.warning("Vector index of collection %d was out of step with the catalog (an "
                                    "interrupted run?); repaired.", self.collection_id)
                    self.save_vectors()
            return self._vectors

    def catch_up(self, generation: int) -> None:
        """Before a search: if the catalog's `generation` (read just before) is not the one both indexes were
        last matched with, add and remove what changed since (vectors from the embedding cache) and rebuild
        the keyword index if its chunks differ. Costs nothing while the generation stands still."""
        with self.lock:
            if generation == self._generation:
                return
            index = self.vectors()
            catalog = self.catalog_ids()
            if self._repair(index, catalog):
                self.save_vectors()
            if not np.array_equal(self.bm25().ids, catalog):
                self.rebuild_bm25()
            self._generation = generation

    def _dim(self) -> int:
        return int(self.embedder.dim)

    def _repair(self, index: VectorIndex, catalog: np.ndarray) -> bool:
        """Make `index` hold exactly the `catalog` ids; whether anything changed."""
        stored = np.sort(index.ids())
        if np.array_equal(catalog, stored):
            return False
        extra = np.setdiff1d(stored, catalog, assume_unique=True)
        missing = np.setdiff1d(catalog, stored, assume_unique=True)
        log.info("Vector index of collection %d: removing %d and adding %d vectors to match the catalog.",
                 self.collection_id, len(extra), len(missing))
        index.remove(extra)
        if len(missing):
            rows = self.chunk_texts(missing)
            vectors = self.vectors_for([h for _, h, _ in rows], [t for _, _, t in rows])
            index.add(np.array([i for i, _, _ in rows], dtype=np.int64), vectors)
        return True

    def vectors_for(self, hashes: list[str], texts: list[str],
                    embedded: Callable[[int], None] | None = None) -> np.ndarray:
        """Vectors for these texts: from the cache, embedding (and caching) only what it lacks, longest first,
        EMBED_SLICE texts at a time; `embedded(n)` after each slice."""
        found = self.cache.get(hashes) if self.cache is not None else {}
        todo = sorted({h: t for h, t in zip(hashes, texts, strict=True) if h not in found}.items(),
                      key=lambda item: -len(item[1]))
        for part in batched(todo, EMBED_SLICE):
            fresh = dict(zip([h for h, _ in part], self.embedder.embed([t for _, t in part]), strict=True))
            if self.cache is not None:
                self.cache.put(fresh)
            found.update(fresh)
            if embedded is not None:
                embedded(len(part))
        if not hashes:
            return np.zeros((0, self._dim()), dtype=np.float32)
        return np.stack([found[h] for h in hashes]).astype(np.float32)

    def save_vectors(self) -> None:
        with self.lock:
            if self._vectors is not None:
                self._vectors.save(self.vectors_path)
                self._vectors_stamp = _stamp(self.vectors_path)

    # --- keywords --------------------------------------------------------------------------------
    def bm25(self) -> BM25Index:
        with self.lock:
            stamp = _stamp(self.bm25_path / "complete.json")
            if self._bm25 is None or stamp != self._bm25_stamp:
                index = None
                if stamp is not None:
                    try:
                        index = BM25Index.load(self.bm25_path)
                    except (OSError, ValueError) as exc:
                        log.warning("Keyword index %s is unreadable (%s); rebuilding it.", self.bm25_path, exc)
                if index is None or not np.array_equal(index.ids, self.catalog_ids()):
                    return self.rebuild_bm25()
                self._bm25, self._bm25_stamp = index, stamp
            return self._bm25

    def rebuild_bm25(self) -> BM25Index:
        with self.lock:
            rows = self.chunk_texts()
            index = BM25Index.build([i for i, _, _ in rows], [t for _, _, t in rows])
            index.save(self.bm25_path)
            self._bm25, self._bm25_stamp = index, _stamp(self.bm25_path / "complete.json")
            return index

    def forget_bm25(self) -> None:
        """The catalog changed in this process: rebuild the keyword index when it is next needed."""
        with self.lock:
            self._bm25, self._bm25_stamp = None, None

    # --- writers ---------------------------------------------------------------------------------
    @contextmanager
    def writer(self) -> Iterator[None]:
        """One writer per collection: per store within this process, across processes on this data directory
        (a lock file), and across replicas on PostgreSQL (an advisory lock held for the run)."""
        with self._file_lock(), self._replica_lock():
            yield

    @contextmanager
    def _replica_lock(self) -> Iterator[None]:
        engine = self.db.kw["bind"]
        if engine.dialect.name != "postgresql":
            yield
            return
        with engine.connect() as conn:
            key = {"kind": WRITER_LOCK, "id": self.collection_id}
            if not conn.scalar(text("SELECT pg_try_advisory_lock(:kind, :id)"), key):
                raise CollectionBusyError("This collection is being indexed by another replica; wait for it to "
                                          "finish.")
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:kind, :id)"), key)
                conn.commit()

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a+") as handle:
            if not self.write_lock.acquire(blocking=False):
                raise CollectionBusyError("This collection is being indexed already; wait for that to finish.")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                self.write_lock.release()
                raise CollectionBusyError(
                    "This collection is being indexed by another process; wait for it to finish.") from exc
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                self.write_lock.release()


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size

