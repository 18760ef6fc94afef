"""Fixtures of the memory tests: a real tokenizer, tiny models, and both databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gguf import GGUFReader
from sqlalchemy import text

from app.database import upgrade
from backbone.generate import LanguageModel
from backbone.gguf import find_gguf, read_metadata
from backbone.tokenizer import ChatTokenizer
from memory.db import make_engine
from memory.sessions import SessionStore
from tests.memory.tiny import tiny_model
from tests.pg import temporary_database


@pytest.fixture(scope="session")
def tokenizer() -> ChatTokenizer:
    return ChatTokenizer.from_gguf_metadata(read_metadata(GGUFReader(find_gguf())))


@pytest.fixture(scope="session")
def model(tokenizer: ChatTokenizer) -> LanguageModel:
    return tiny_model(tokenizer, seed=0)


@pytest.fixture(scope="session")
def other_model(tokenizer: ChatTokenizer) -> LanguageModel:
    """Same shapes as `model`, other weights: its states would load into `model` but mean nothing there."""
    return tiny_model(tokenizer, seed=1)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One throwaway PostgreSQL database for all memory tests, migrated once."""
    with temporary_database("rillet_memory") as url:
        upgrade(url)
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'memory.db'}"
        upgrade(url)
        yield url
        return
    url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    with engine.begin() as conn:  # each test starts empty (messages and snapshots cascade)
        conn.execute(text("DELETE FROM sessions"))
    engine.dispose()
    yield url


@pytest.fixture
def store(db_url: str) -> Iterator[SessionStore]:
    engine = make_engine(db_url)
    yield SessionStore(engine)
    engine.dispose()
