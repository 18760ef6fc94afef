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
from tests.memory.tiny import tiny_model, tiny_student
from tests.pg import temporary_database


@pytest.fixture(scope="session")
def tokenizer() -> ChatTokenizer:
    return ChatTokenizer.from_gguf_metadata(read_metadata(GGUFReader(find_gguf())))


@pytest.fixture(scope="session")
def models(tokenizer: ChatTokenizer) -> dict[str, tuple[LanguageModel, LanguageModel]]:
    """Per kind of state, two tiny models of equal shapes and different weights: the second one's states
    would load into the first but mean nothing there."""
    return {"kv-cache": (tiny_model(tokenizer, 0), tiny_model(tokenizer, 1)),
            "recurrent": (tiny_student(tokenizer, 0), tiny_student(tokenizer, 1))}


@pytest.fixture
def model(models: dict[str, tuple[LanguageModel, LanguageModel]]) -> LanguageModel:
    """The tiny softmax model; modules about states override this with both kinds."""
    return models["kv-cache"][0]


@pytest.fixture
def other_model(models: dict[str, tuple[LanguageModel, LanguageModel]], model: LanguageModel) -> LanguageModel:
    return next(other for first, other in models.values() if first is model)


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
