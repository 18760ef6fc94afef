"""Fixtures of the retrieval tests: the real embedding model (loaded once), both databases, a repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.database import upgrade
from memory.db import make_engine
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


def open_retrieval(url: str, index_dir: Path, embedder: SentenceEmbedder) -> Retrieval:
    return Retrieval(make_engine(url), index_dir, embedder, max_file_bytes=MAX_FILE_BYTES)
