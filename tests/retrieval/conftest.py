"""Fixtures of the retrieval tests: the real embedding model (loaded once), both databases, a repository,
and PostgreSQL with pgvector (pgserver's build, started in a temporary folder) for the pgvector store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from app.database import upgrade
from memory.db import Base, make_engine
from retrieval.embedder import SentenceEmbedder
from retrieval.service import Retrieval
from tests.retrieval.repo import MAX_FILE_BYTES, build_repo


@pytest.fixture(scope="session")
def embedder() -> SentenceEmbedder:
    model = SentenceEmbedder(device="cpu")
    model.embed(["load the model once"])
    return model


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    upgrade(url)
    return url


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return build_repo(tmp_path / "repo", tmp_path / "elsewhere")


# Database URLs whose tests keep vectors in pgvector (the `pgvector` parameter of `db_url` and `vector_url`).
PGVECTOR_URLS: set[str] = set()


def open_retrieval(url: str, index_dir: Path, embedder: SentenceEmbedder) -> Retrieval:
    store = "pgvector" if url in PGVECTOR_URLS else "faiss"
    return Retrieval(make_engine(url), index_dir, embedder, max_file_bytes=MAX_FILE_BYTES, vector_store=store)


@pytest.fixture(scope="session")
def pgvector_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database on a PostgreSQL with the vector extension, for the whole run."""
    pgserver = pytest.importorskip("pgserver", reason="pgserver (a test dependency: pip install -e '.[test]') "
                                                      "carries the PostgreSQL build with pgvector")
    server = pgserver.get_server(tmp_path_factory.mktemp("pgvector"), cleanup_mode="stop")
    try:
        server.psql("CREATE DATABASE rillet_vectors;")
        url = server.get_uri("rillet_vectors").replace("postgresql://", "postgresql+psycopg://", 1)
        upgrade(url)
        PGVECTOR_URLS.add(url)
        yield url
    finally:
        server.cleanup()


def empty_pgvector(url: str) -> str:
    """The pgvector database with every row and every collection's vector table gone."""
    engine = make_engine(url)
    with engine.begin() as conn:
        for (name,) in conn.execute(text("SELECT tablename FROM pg_tables WHERE tablename LIKE 'rillet_vectors_%'")):
            conn.execute(text(f'DROP TABLE "{name}"'))
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres),
                        pytest.param("pgvector", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both databases (as tests/conftest.py's `db_url`), and PostgreSQL again with the vectors in pgvector."""
    if request.param == "pgvector":
        return empty_pgvector(request.getfixturevalue("pgvector_server"))
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'rillet.db'}"
        upgrade(url)
        return url
    url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()
    return url


@pytest.fixture(params=["faiss", pytest.param("pgvector", marks=pytest.mark.postgres)])
def vector_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """SQLite with FAISS, or PostgreSQL with pgvector: each vector store once."""
    return sqlite_url if request.param == "faiss" else empty_pgvector(request.getfixturevalue("pgvector_server"))
