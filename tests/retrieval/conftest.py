"""Fixtures of the retrieval tests: the real embedding model (loaded once), both databases, a repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from app.database import upgrade
from memory.db import make_engine
from retrieval.embedder import SentenceEmbedder
from retrieval.service import Retrieval
from tests.pg import temporary_database
from tests.retrieval.repo import MAX_FILE_BYTES, build_repo


@pytest.fixture(scope="session")
def embedder() -> SentenceEmbedder:
    model = SentenceEmbedder(device="cpu")
    model.embed(["load the model once"])
    return model


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One throwaway PostgreSQL database for all retrieval tests, migrated once."""
    with temporary_database("rillet_retrieval") as url:
        upgrade(url)
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
        upgrade(url)
        yield url
        return
    url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    with engine.begin() as conn:  # each test starts empty (files and chunks cascade)
        conn.execute(text("DELETE FROM collections"))
        conn.execute(text("DELETE FROM embeddings"))
    engine.dispose()
    yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    upgrade(url)
    return url


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return build_repo(tmp_path / "repo", tmp_path / "elsewhere")


def open_retrieval(url: str, index_dir: Path, embedder: SentenceEmbedder) -> Retrieval:
    return Retrieval(make_engine(url), index_dir, embedder, max_file_bytes=MAX_FILE_BYTES)
