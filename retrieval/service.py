"""The retrieval service the application talks to: collections, indexing, search, and API documents.

    retrieval = Retrieval(engine, settings.indexes)
    retrieval.create_collection("rillet", ["~/src/rillet"], ignore=["*.lock"])
    report = retrieval.index("rillet", progress=print)
    for hit in retrieval.search("rillet", "where is the config loaded", k=5):
        print(hit.citation, hit.score)

A collection with roots is crawled from disk; one without roots holds documents added through
`add_documents` (the LangChain vector store uses those). One instance may serve many threads.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from backbone.errors import InvalidRequest, UserError
from memory.db import make_sessionmaker, utcnow
from memory.limits import COLLECTION_NAME_MAX
from memory.text import NOT_IN_NAMES, codepoint
from retrieval.catalog import Chunk, Collection, File, bump_generation
from retrieval.chunking import Chunker
from retrieval.crawl import PATH_MAX_CHARS
from retrieval.embedder import Embedder, SentenceEmbedder, text_hash
from retrieval.embedding_cache import EmbeddingCache, batched
from retrieval.indexer import Indexer, IndexReport, Progress
from retrieval.search import (
    BM25_WEIGHT,
    CANDIDATES,
    RRF_K,
    VECTOR_WEIGHT,
    Hit,
    Mode,
    allowed_ids,
    load_hits,
    reciprocal_rank_fusion,
)
from retrieval.store import CollectionStore

log = logging.getLogger(__name__)
VectorStoreKind = Literal["faiss", "pgvector"]
DOCUMENT = "document"  # the language of documents added through the API
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # what no database text column takes


class CollectionNotFoundError(UserError, LookupError):
    """No collection has this name (deleted, or never created)."""


class CollectionElsewhereError(InvalidRequest):
    """A collection of this name exists already over other folders (`roots`) than the one asked for (`root`)."""

    def __init__(self, name: str, roots: list[str], root: str) -> None:
        super().__init__(f"A collection named {name!r} already indexes {', '.join(roots)}; choose another name "
                         "for this folder.")
        self.name, self.roots, self.root = name, roots, root


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    roots: list[str]
    ignore: list[str]
    embedding_model: str
    created_at: datetime
    indexed_at: datetime | None
    files: int
    chunks: int


class Retrieval:
    def __init__(self, db: Engine | sessionmaker[Session], index_dir: Path | str, embedder: Embedder | None = None,
                 *, max_file_bytes: int | None = None, vector_store: VectorStoreKind = "faiss") -> None:
        self.db = db if isinstance(db, sessionmaker) else make_sessionmaker(db)
        if vector_store not in ("faiss", "pgvector"):
            raise InvalidRequest(f"Unknown vector store {vector_store!r}; use faiss or pgvector.")
        self.vector_store = vector_store
        if vector_store == "pgvector":
            from retrieval.pgvector_index import ensure_pgvector

            ensure_pgvector(self.db.kw["bind"])
        self.index_dir = Path(index_dir).expanduser()
        self.embedder: Embedder = embedder or SentenceEmbedder()
        self.cache = EmbeddingCache(self.db, self.embedder.name) if self.embedder.cacheable else None
        self.chunker = Chunker(self.embedder.count_tokens, max_tokens=self.embedder.max_tokens)
        self.max_file_bytes = max_file_bytes
        self._stores: dict[int, CollectionStore] = {}
        self._stores_lock = threading.Lock()

    # --- collections -----------------------------------------------------------------------------
    def create_collection(self, name: str, roots: Sequence[Path | str] = (),
                          ignore: Sequence[str] = ()) -> CollectionInfo:
        """A new collection over `roots` (existing folders), with gitignore-style `ignore` patterns."""
        name = name.strip()
        if not name or len(name) > COLLECTION_NAME_MAX:
            raise InvalidRequest(f"A collection needs a name of 1 to {COLLECTION_NAME_MAX} characters.")
        found = NOT_IN_NAMES.search(name)
        if found:
            raise InvalidRequest(f"A collection name is one line without control characters "
                                 f"({codepoint(found.group())} given); use letters, digits, spaces and punctuation.")
        resolved = []
        for root in roots:
            path = Path(root).expanduser().resolve()
            if not path.is_dir():
                raise InvalidRequest(f"{root} is not a folder; give the folder that holds the files to index.")
            resolved.append(str(path))
        with self.db.begin() as session:
            if session.scalar(select(Collection.id).where(Collection.name == name)) is not None:
                raise InvalidRequest(f"A collection named {name!r} exists already; choose another name or delete it.")
            session.add(Collection(name=name, roots=resolved, ignore=list(ignore), embedding_model=self.embedder.name))
        return self.get_collection(name)

    def ensure_collection(self, name: str, root: Path | str, ignore: Sequence[str] | None = None) -> CollectionInfo:
        """The collection `name` over the one folder `root`: created when missing; an existing one must index
        that same folder (`CollectionElsewhereError` otherwise). `ignore`, when given, replaces its patterns."""
        folder = str(Path(root).expanduser().resolve())
        try:
            info = self.get_collection(name)
        except CollectionNotFoundError:
            return self.create_collection(name, [folder], ignore or ())
        if info.roots != [folder]:
            raise CollectionElsewhereError(name, info.roots, folder)
        if ignore and list(ignore) != info.ignore:
            self.set_ignore(name, ignore)
            info = self.get_collection(name)
        return info

    def get_collection(self, name: str) -> CollectionInfo:
        with self.db() as session:
            collection = self._row(session, name)
            files = session.scalar(select(func.count(File.id)).where(File.collection_id == collection.id)) or 0
            chunks = session.scalar(select(func.count(Chunk.id)).join(File).where(
                File.collection_id == collection.id)) or 0
            return CollectionInfo(collection.name, list(collection.roots), list(collection.ignore),
                                  collection.embedding_model, collection.created_at, collection.indexed_at,
                                  files, chunks)

    def list_collections(self) -> list[CollectionInfo]:
        with self.db() as session:
            names = session.scalars(select(Collection.name).order_by(Collection.name)).all()
        return [self.get_collection(n) for n in names]

    def set_ignore(self, name: str, ignore: Sequence[str]) -> None:
        """Replace the collection's ignore patterns; the next `index` drops newly ignored files."""
        with self.db.begin() as session:
            self._row(session, name).ignore = list(ignore)

    def delete_collection(self, name: str) -> None:
        """Remove the collection, its catalog rows and its index files (the files on disk stay)."""
        with self.db.begin() as session:
            collection = self._row(session, name)
            collection_id = collection.id
            file_ids = select(File.id).where(File.collection_id == collection_id)
            session.execute(delete(Chunk).where(Chunk.file_id.in_(file_ids)))
            session.execute(delete(File).where(File.collection_id == collection_id))
            session.execute(delete(Collection).where(Collection.id == collection_id))
        with self._stores_lock:
            self._stores.pop(collection_id, None)
        shutil.rmtree(self._folder(collection_id), ignore_errors=True)
        if self.vector_store == "pgvector":
            from retrieval.pgvector_index import drop_table

            drop_table(self.db, collection_id)
        if self.cache is not None:
            self.cache.prune()

    # --- indexing --------------------------------------------------------------------------------
    def index(self, name: str, progress: Callable[[Progress], None] | None = None) -> IndexReport:
        """Bring the collection's index up to date with its folders; only changes cost time."""
        with self.db() as session:
            collection = self._row(session, name)
            collection_id, roots, ignore = collection.id, list(collection.roots), list(collection.ignore)
            model = collection.embedding_model
        if not roots:
            raise InvalidRequest(f"Collection {name!r} has no folders to index; its documents are added through "
                                 "the API.")
        store = self._store(collection_id)
        with store.writer():
            if model != self.embedder.name:
                self._clear(collection_id, store)
            report = Indexer(name=name, collection_id=collection_id, roots=roots, ignore=ignore,
                             db=self.db, store=store, chunker=self.chunker, progress=progress,
                             max_file_bytes=self.max_file_bytes).run()
            with self.db.begin() as session:
                session.execute(update(Collection).where(Collection.id == collection_id).values(
                    indexed_at=utcnow(), embedding_model=self.embedder.name))
        return report

    def _clear(self, collection_id: int, store: CollectionStore) -> None:
        """The collection was embedded with another model: its vectors are useless, start over."""
        log.warning("Collection %d was embedded with another model; re-indexing it from scratch.", collection_id)
        with self.db.begin() as session:
            bump_generation(session, collection_id)
            session.execute(delete(File).where(File.collection_id == collection_id))
        shutil.rmtree(store.folder / "bm25", ignore_errors=True)
        store.vectors_path.unlink(missing_ok=True)
        store.forget_bm25()

    # --- search ----------------------------------------------------------------------------------
    def search(self, name: str, query: str, k: int = 8, *, path_glob: str | None = None,
               language: str | None = None, mode: Mode = "hybrid") -> list[Hit]:
        """The `k` best chunks for `query`, best first. `mode`: hybrid (default), vector or bm25."""
        if not query.strip():
            raise InvalidRequest("The search query is empty; type a question or some words to look for.")
        if mode not in ("hybrid", "vector", "bm25"):
            raise InvalidRequest(f"Unknown search mode {mode!r}; use hybrid, vector or bm25.")
        roots, store, allowed = self._prepare_search(name, path_glob, language)
        if allowed is not None and len(allowed) == 0:
            return []
        candidates = max(CANDIDATES, 2 * k)
        rankings, weights, scores = [], [], {}
        if mode != "bm25":
            ids, vector_scores = self._vector_ranking(store, self._embed_query(query), candidates, allowed)
            rankings.append(ids)
            weights.append(VECTOR_WEIGHT)
            scores["vector"] = dict(zip(ids, vector_scores, strict=True))
        if mode != "vector":
            with store.lock:
                ids, keyword_scores = store.bm25().search(query, candidates, allowed)
            rankings.append(ids.tolist())
            weights.append(BM25_WEIGHT)
            scores["bm25"] = dict(zip(ids.tolist(), keyword_scores.tolist(), strict=True))
        fused = reciprocal_rank_fusion(rankings, weights, RRF_K) if mode == "hybrid" else list(scores[mode].items())
        with self.db() as session:
            return load_hits(session, fused[:k], roots)

    def search_by_vector(self, name: str, vector: np.ndarray, k: int = 8) -> list[Hit]:
        """Nearest chunks to an embedding (cosine similarity as the score)."""
        roots, store, _ = self._prepare_search(name, None, None)
        ids, scores = self._vector_ranking(store, vector, k, None)
        with self.db() as session:
            return load_hits(session, list(zip(ids, scores, strict=True)), roots)

    def _prepare_search(self, name: str, path_glob: str | None, language: str | None):  # type: ignore[no-untyped-def]
        """The collection's roots, its store caught up with the catalog, and the chunk ids a filter allows."""
        with self.db() as session:
            collection = self._row(session, name)
            collection_id, roots, generation = collection.id, list(collection.roots), collection.generation
            allowed = allowed_ids(session, collection_id, roots, path_glob, language) \
                if path_glob or language else None
        store = self._store(collection_id)
        store.catch_up(generation)
        return roots, store, allowed

    def _vector_ranking(self, store: CollectionStore, vector: np.ndarray, k: int,
                        allowed: np.ndarray | None) -> tuple[list[int], list[float]]:
        with store.lock:
            scores, ids = store.vectors().search(np.asarray(vector, dtype=np.float32)[None, :], k, allowed)
        keep = ids[0] >= 0
        return ids[0][keep].tolist(), scores[0][keep].tolist()

    def _embed_query(self, query: str) -> np.ndarray:
        return np.asarray(self.embedder.embed_query(query), dtype=np.float32)

    # --- documents added through the API ---------------------------------------------------------
    def add_documents(self, name: str, documents: Sequence[tuple[str | None, str, dict[str, Any] | None]]) -> list[str]:
        """Add or replace (id, text, metadata) documents, each one chunk; returns their ids (new ones are
        UUIDs). Meant for text that is already split, as LangChain hands it over. Text or an id holding NUL
        or half a character (no database stores either) is refused with the document named."""
        ids = [doc_id if doc_id is not None else str(uuid.uuid4()) for doc_id, _, _ in documents]
        for doc_id, (_, text, _) in zip(ids, documents, strict=True):
            for what, value in (("id", doc_id), ("text", text)):
                if not isinstance(value, str) or UNSTORABLE.search(value):
                    raise InvalidRequest(f"Document {doc_id!r}: its {what} holds NUL or half a character (a lone "
                                         "surrogate), which cannot be stored; remove it first.")
            if len(doc_id) > PATH_MAX_CHARS:
                raise InvalidRequest(f"Document id {doc_id[:40]!r}… is longer than {PATH_MAX_CHARS} characters.")
        latest = {doc_id: (text, meta) for doc_id, (_, text, meta) in zip(ids, documents, strict=True)}
        collection_id, store = self._documents_collection(name)
        keys = list(latest)
        hashes = [text_hash(latest[i][0]) for i in keys]
        vectors = store.vectors_for(hashes, [latest[i][0] for i in keys])
        with self.db.begin() as session:
            bump_generation(session, collection_id)
            old_files = self._document_files(session, collection_id, keys)
            old_chunks = store.drop_chunks(session, list(old_files.values()), files=True)
            file_ids = session.scalars(insert(File).returning(File.id, sort_by_parameter_order=True), [
                {"collection_id": collection_id, "root": 0, "path": i, "size": len(latest[i][0]),
                 "mtime": 0.0, "content_hash": h, "language": DOCUMENT, "status": "indexed"}
                for i, h in zip(keys, hashes, strict=True)]).all()
            chunk_ids = session.scalars(insert(Chunk).returning(Chunk.id, sort_by_parameter_order=True), [
                {"file_id": f, "ordinal": 0, "start_line": 1, "end_line": latest[i][0].count("\n") + 1,
                 "text": latest[i][0], "text_hash": h, "meta": latest[i][1] or {}}
                for i, h, f in zip(keys, hashes, file_ids, strict=True)]).all()
        store.change_vectors(old_chunks, chunk_ids, vectors, save=True)
        return ids

    def get_documents(self, name: str, ids: Sequence[str]) -> list[tuple[str, str, dict[str, Any]]]:
        """(id, text, metadata) of the documents that exist, in the order of `ids`."""
        collection_id, _ = self._documents_collection(name)
        with self.db() as session:
            found = {}
            for b in batched(list(ids)):
                rows = session.execute(select(File.path, Chunk.text, Chunk.meta).join(Chunk).where(
                    File.collection_id == collection_id, File.root == 0, File.path.in_(b)))
                found.update((path, (text, meta or {})) for path, text, meta in rows)
        return [(i, *found[i]) for i in ids if i in found]

    def delete_documents(self, name: str, ids: Sequence[str]) -> int:
        collection_id, store = self._documents_collection(name)
        with self.db.begin() as session:
            bump_generation(session, collection_id)
            files = self._document_files(session, collection_id, list(ids))
            chunks = store.drop_chunks(session, list(files.values()), files=True)
        store.change_vectors(chunks, save=True)
        return len(files)

    def _documents_collection(self, name: str) -> tuple[int, CollectionStore]:
        with self.db() as session:
            collection = self._row(session, name)
            if collection.roots:
                raise InvalidRequest(f"Collection {name!r} indexes folders; add documents to a collection "
                                 "created without folders.")
            if collection.embedding_model != self.embedder.name:
                raise InvalidRequest(f"Collection {name!r} was embedded with {collection.embedding_model}, "
                                 f"not {self.embedder.name}; use that model or another collection.")
            return collection.id, self._store(collection.id)

    @staticmethod
    def _document_files(session: Session, collection_id: int, ids: list[str]) -> dict[str, int]:
        return {path: file_id for b in batched(ids) for file_id, path in session.execute(
            select(File.id, File.path).where(File.collection_id == collection_id, File.path.in_(b)))}

    # --- plumbing --------------------------------------------------------------------------------
    @staticmethod
    def _row(session: Session, name: str) -> Collection:
        # A name no collection can have is not looked up: the database would refuse it (NUL, half a character).
        storable = isinstance(name, str) and not UNSTORABLE.search(name)
        collection = session.scalar(select(Collection).where(Collection.name == name)) if storable else None
        if collection is None:
            raise CollectionNotFoundError(f"No collection named {name!r}; `rillet index PATH --collection "
                                          f"{name}` creates it.")
        return collection

    def _folder(self, collection_id: int) -> Path:
        return self.index_dir / f"collection-{collection_id}"

    def _store(self, collection_id: int) -> CollectionStore:
        with self._stores_lock:
            if collection_id not in self._stores:
                self._stores[collection_id] = CollectionStore(self._folder(collection_id), collection_id,
                                                              self.db, self.embedder, self.cache,
                                                              new_vectors=self._vectors_factory(collection_id))
            return self._stores[collection_id]

    def _vectors_factory(self, collection_id: int) -> Callable[[int], Any] | None:
        """How a collection's vector index is made: None for FAISS (the store's default, a file per
        collection), a table in the database for pgvector."""
        if self.vector_store != "pgvector":
            return None
        from retrieval.pgvector_index import PgVectorIndex

        return lambda dim: PgVectorIndex(self.db, collection_id, dim)

