"""Two processes' worth of retrieval over one database, each with its own index folder (two replicas, or
the CLI beside the server): a collection changed through one is searched fresh through the other, which
catches up from the catalog and the embedding cache without embedding anything again."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from retrieval.catalog import Collection
from retrieval.embedder import SentenceEmbedder
from retrieval.service import Retrieval
from retrieval.store import CollectionBusyError
from tests.retrieval.conftest import open_retrieval
from tests.retrieval.repo import TOPICS, helpers_module
from tests.retrieval.test_service import consistent


class CountingEmbedder:
    """The real embedder, counting the texts it embeds for the index (queries aside)."""

    def __init__(self, inner: SentenceEmbedder) -> None:
        self.inner, self.embedded = inner, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded += len(texts)
        return self.inner.embed(texts)


def paths(retrieval: Retrieval, query: str, k: int = 3) -> list[str]:
    return [hit.path for hit in retrieval.search("shared", query, k=k)]


def generation(retrieval: Retrieval) -> int:
    with retrieval.db() as session:
        return session.scalar(select(Collection.generation).where(Collection.name == "shared"))


def test_changes_through_one_replica_are_searched_fresh_through_the_other(
        db_url: str, tmp_path: Path, embedder: SentenceEmbedder) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "helpers.py").write_text(helpers_module(TOPICS[:6]))
    (folder / "notes.md").write_text("# Kettle\n\nThe kettle boils water at the press of the red button.\n")
    a = open_retrieval(db_url, tmp_path / "a", embedder)
    counted = CountingEmbedder(embedder)
    b = open_retrieval(db_url, tmp_path / "b", counted)  # type: ignore[arg-type]
    a.create_collection("shared", [folder])
    a.index("shared")

    assert paths(b, "boil water with the kettle")[0] == "notes.md"  # B loads the collection A indexed
    before = generation(b)

    (folder / "tides.md").write_text("# Tides\n\nThe moon's pull raises the sea twice a day: high tide.\n")
    a.index("shared")
    assert generation(b) > before
    assert paths(b, "why does the sea rise twice a day")[0] == "tides.md"

    (folder / "notes.md").write_text("# Kettle\n\nThe kettle whistles when the tea water is ready to pour.\n")
    a.index("shared")
    hit = b.search("shared", "a whistle tells you the tea water is ready", k=1)[0]
    assert (hit.path, "whistles" in hit.text) == ("notes.md", True)
    assert all("red button" not in h.text for h in b.search("shared", "press the red button", k=10))

    (folder / "tides.md").unlink()
    a.index("shared")
    assert "tides.md" not in paths(b, "why does the sea rise twice a day", k=10)
    assert "tides.md" not in [h.path for h in b.search("shared", "moon tide", k=10, mode="bm25")]

    assert counted.embedded == 0  # every vector B needed came from the embedding cache A filled
    np.testing.assert_array_equal(consistent(b, "shared"), consistent(a, "shared"))


def test_an_unchanged_generation_costs_no_catalog_read(sqlite_url: str, tmp_path: Path,
                                                       embedder: SentenceEmbedder) -> None:
    """The check before a search is the generation read with the collection's row: while it stands still,
    the indexes are not compared with the catalog again."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.md").write_text("# Kettle\n\nThe kettle boils water at the press of the red button.\n")
    a = open_retrieval(sqlite_url, tmp_path / "a", embedder)
    a.create_collection("shared", [folder])
    a.index("shared")
    b = open_retrieval(sqlite_url, tmp_path / "b", embedder)
    b.search("shared", "kettle")
    store = b._prepare_search("shared", None, None)[1]
    reads = []
    original = store.catalog_ids
    store.catalog_ids = lambda: reads.append(1) or original()  # type: ignore[method-assign]
    b.search("shared", "kettle")
    assert reads == []
    (folder / "more.md").write_text("# Kite\n\nA kite flies on a windy beach.\n")
    a.index("shared")
    assert paths(b, "a kite on the beach")[0] == "more.md"
    assert reads  # the moved generation made B compare


@pytest.mark.postgres
def test_one_replica_at_a_time_indexes_a_collection(postgres_url: str, tmp_path: Path,
                                                    embedder: SentenceEmbedder) -> None:
    """Each replica's lock file is in its own data directory; on PostgreSQL an advisory lock per collection
    keeps a second replica from indexing it at the same time, and is released when the first is done."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.md").write_text("# Kettle\n\nThe kettle boils water at the press of the red button.\n")
    a = open_retrieval(postgres_url, tmp_path / "a", embedder)
    b = open_retrieval(postgres_url, tmp_path / "b", embedder)
    name = f"busy-{tmp_path.name}"
    a.create_collection(name, [folder])
    with a.db() as session:
        store = a._store(session.scalar(select(Collection.id).where(Collection.name == name)))
    with store.writer(), pytest.raises(CollectionBusyError, match="another replica"):
        b.index(name)
    assert b.index(name).indexed == 1
    a.delete_collection(name)
