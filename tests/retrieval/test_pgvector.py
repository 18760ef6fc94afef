"""The pgvector store against FAISS on the same collection: the same ranking, and vectors held once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backbone.errors import SetupError
from memory.db import make_engine
from retrieval.embedder import SentenceEmbedder
from retrieval.service import Retrieval
from tests.retrieval.conftest import empty_pgvector
from tests.retrieval.repo import MAX_FILE_BYTES, TOPICS

pytestmark = pytest.mark.postgres


def test_pgvector_ranks_like_faiss_and_embeds_nothing_again(pgvector_server: str, repo: Path, tmp_path: Path,
                                                            embedder: SentenceEmbedder) -> None:
    url = empty_pgvector(pgvector_server)
    faiss = Retrieval(make_engine(url), tmp_path / "faiss", embedder, max_file_bytes=MAX_FILE_BYTES)
    faiss.create_collection("repo", [repo])
    faiss.index("repo")
    # The same catalog searched through pgvector: its table fills from the embedding cache alone.
    pg = Retrieval(make_engine(url), tmp_path / "pg", embedder, vector_store="pgvector")
    queries = [doc for _, doc, _ in TOPICS] + ["circle area radius", "restart the daemon", "café crème"]
    for query in queries:
        expected = faiss.search("repo", query, k=10, mode="vector")
        found = pg.search("repo", query, k=10, mode="vector")
        assert [h.chunk_id for h in found] == [h.chunk_id for h in expected] or _ties_only(expected, found), query
        np.testing.assert_allclose([h.score for h in found], [h.score for h in expected], atol=1e-5)
        assert [h.chunk_id for h in pg.search("repo", query, k=5)] == [h.chunk_id for h in
                                                                       faiss.search("repo", query, k=5)], query
    store = pg._prepare_search("repo", None, None)[1]
    assert not store.vectors_path.exists()  # the vectors live in the database, not beside the replica
    assert np.array_equal(np.sort(store.vectors().ids()), store.catalog_ids())


def _ties_only(expected: list, found: list) -> bool:
    """Orders that differ only among hits whose scores are equal to float precision."""
    by_score = lambda hits: sorted((round(h.score, 5), h.chunk_id) for h in hits)  # noqa: E731
    return by_score(expected) == by_score(found)


def test_pgvector_on_a_database_without_it_says_how_to_fix(sqlite_url: str, tmp_path: Path,
                                                          embedder: SentenceEmbedder) -> None:
    with pytest.raises(SetupError, match="RILLET_VECTOR_STORE=faiss"):
        Retrieval(make_engine(sqlite_url), tmp_path, embedder, vector_store="pgvector")


def test_postgresql_without_the_extension_says_how_to_fix(postgres_url: str, tmp_path: Path,
                                                          embedder: SentenceEmbedder) -> None:
    """The PostgreSQL the other tests use has no pgvector (Debian 12 packages none for PostgreSQL 15)."""
    from sqlalchemy import text

    engine = make_engine(postgres_url)
    with engine.connect() as conn:
        available = conn.execute(text("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")).scalar()
    if available:
        pytest.skip("this PostgreSQL server has the vector extension, so the missing-extension message cannot show")
    with pytest.raises(SetupError, match="install pgvector"):
        Retrieval(engine, tmp_path, embedder, vector_store="pgvector")
