"""LangChain integration: a `VectorStore` over a Rillet collection, and a hybrid-search retriever.

    store = RilletVectorStore.open(engine, settings.indexes, "notes", embedding=my_embeddings)
    store.add_documents(docs)                      # a collection without folders holds API documents
    retriever = RilletRetriever(retrieval=Retrieval(engine, settings.indexes), collection="rillet", k=5)
    retriever.invoke("where is the config loaded")   # vector + BM25, with path:line metadata

The vector store keeps LangChain's contract (similarity = cosine of the given embeddings, metadata back
exactly as given); the retriever adds what Rillet does beyond it: hybrid ranking, filters, citations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from pydantic import ConfigDict
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from retrieval.embedder import SentenceEmbedder, count_tokens
from retrieval.search import Hit
from retrieval.service import CollectionNotFoundError, Retrieval


class RilletEmbeddings(Embeddings):
    """Rillet's sentence embedder (all-MiniLM-L6-v2, offline) as LangChain `Embeddings`."""

    def __init__(self, embedder: SentenceEmbedder | None = None) -> None:
        self.embedder = embedder or SentenceEmbedder()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed([text])[0].tolist()


class EmbeddingsAdapter:
    """Any LangChain `Embeddings` as a Rillet embedder; vectors are normalised so that the index's inner
    product is cosine similarity. Not cached by text: the model behind it is unknown. Its tokenizer is
    unknown too, so chunks are measured and cut as for all-MiniLM-L6-v2 (256 of its tokens)."""

    cacheable = False
    max_tokens = 256

    def __init__(self, embeddings: Embeddings) -> None:
        self.embeddings = embeddings
        self.name = f"langchain:{type(embeddings).__name__}"

    @cached_property
    def dim(self) -> int:
        return len(self.embeddings.embed_query("dimension probe"))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _normalised(np.asarray(self.embeddings.embed_documents(list(texts)), dtype=np.float32))

    def embed_query(self, text: str) -> np.ndarray:
        return _normalised(np.asarray([self.embeddings.embed_query(text)], dtype=np.float32))[0]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(texts)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def hit_to_document(hit: Hit) -> Document:
    """API documents come back with their own id and metadata; file chunks with where they are."""
    if hit.root is None:
        return Document(id=hit.path, page_content=hit.text, metadata=dict(hit.meta or {}))
    return Document(id=str(hit.chunk_id), page_content=hit.text, metadata={
        "source": hit.path, "citation": hit.citation, "start_line": hit.start_line, "end_line": hit.end_line,
        "page": hit.page, "language": hit.language, "header": hit.header, "score": hit.score})


class RilletVectorStore(VectorStore):
    """A LangChain vector store backed by one collection of a `Retrieval` service."""

    def __init__(self, retrieval: Retrieval, collection: str, embedding: Embeddings | None = None) -> None:
        self.retrieval, self.collection = retrieval, collection
        self._embedding = embedding

    @classmethod
    def open(cls, db: Engine | sessionmaker[Session], index_dir: Path | str, collection: str,
             embedding: Embeddings | None = None) -> RilletVectorStore:
        """The store of `collection`, created (without folders) if it does not exist. Without `embedding`,
        Rillet's own model is used (and its embedding cache)."""
        embedding = embedding or RilletEmbeddings()
        embedder = embedding.embedder if isinstance(embedding, RilletEmbeddings) else EmbeddingsAdapter(embedding)
        retrieval = Retrieval(db, index_dir, embedder)
        try:
            retrieval.get_collection(collection)
        except CollectionNotFoundError:
            retrieval.create_collection(collection)
        return cls(retrieval, collection, embedding)

    @property
    def embeddings(self) -> Embeddings | None:
        return self._embedding

    def add_texts(self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts = list(texts)
        metadatas = metadatas or [{} for _ in texts]
        ids = ids or [None] * len(texts)  # type: ignore[list-item]
        if not len(texts) == len(metadatas) == len(ids):
            raise ValueError("texts, metadatas and ids must be lists of the same length")
        return self.retrieval.add_documents(self.collection, list(zip(ids, texts, metadatas, strict=True)))

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        if ids is None:
            raise ValueError("Give the ids to delete; to empty a collection, delete the collection.")
        self.retrieval.delete_documents(self.collection, ids)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return [Document(id=i, page_content=text, metadata=meta)
                for i, text, meta in self.retrieval.get_documents(self.collection, ids)]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        """Cosine similarity (higher is closer); `path_glob` and `language` filter file collections."""
        hits = self.retrieval.search(self.collection, query, k, mode="vector", path_glob=kwargs.get("path_glob"),
                                     language=kwargs.get("language"))
        return [(hit_to_document(h), h.score) for h in hits]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[Document]:
        vector = _normalised(np.asarray([embedding], dtype=np.float32))[0]
        return [hit_to_document(h) for h in self.retrieval.search_by_vector(self.collection, vector, k)]

    def _select_relevance_score_fn(self):  # type: ignore[no-untyped-def]
        return lambda score: (score + 1.0) / 2.0  # cosine in [-1, 1] to relevance in [0, 1]

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, db: Engine | sessionmaker[Session] | None = None,
                   index_dir: Path | str | None = None, collection: str = "langchain",
                   **kwargs: Any) -> RilletVectorStore:
        if db is None or index_dir is None:
            raise ValueError("RilletVectorStore.from_texts needs db= (engine or sessionmaker) and index_dir=.")
        store = cls.open(db, index_dir, collection, embedding)
        store.add_texts(texts, metadatas, ids=ids)
        return store


class RilletRetriever(BaseRetriever):
    """Hybrid (vector + BM25) retrieval over a collection; `k`, `path_glob`, `language` and `mode` may
    also be given per call (`retriever.invoke(query, k=3)`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retrieval: Retrieval
    collection: str
    k: int = 8
    path_glob: str | None = None
    language: str | None = None
    mode: str = "hybrid"

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        hits = self.retrieval.search(self.collection, query, kwargs.get("k", self.k),
                                     path_glob=kwargs.get("path_glob", self.path_glob),
                                     language=kwargs.get("language", self.language),
                                     mode=kwargs.get("mode", self.mode))
        return [hit_to_document(h) for h in hits]
