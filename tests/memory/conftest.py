"""Fixtures of the memory tests: a real tokenizer, tiny models, and both databases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gguf import GGUFReader

from backbone.generate import LanguageModel
from backbone.gguf import find_gguf, read_metadata
from backbone.tokenizer import ChatTokenizer
from memory.db import make_engine
from memory.sessions import SessionStore
from tests.memory.tiny import tiny_model, tiny_student


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


@pytest.fixture
def store(db_url: str) -> Iterator[SessionStore]:
    engine = make_engine(db_url)
    yield SessionStore(engine)
    engine.dispose()
