"""The retrieval service end to end on a real repository, real model, real FAISS, SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, text

from retrieval.catalog import Chunk, Embedding, File
from retrieval.embedder import SentenceEmbedder
from retrieval.service import CollectionNotFoundError, Retrieval
from tests.retrieval.conftest import open_retrieval
from tests.retrieval.repo import CONTENT_SKIPS, CRAWL_SKIPS, EXPECTED_FAILS, EXPECTED_INDEXED, TOPICS


def consistent(retrieval: Retrieval, name: str) -> np.ndarray:
    """Assert that the vector and keyword indexes hold exactly the catalog's chunks; return their ids."""
    store = retrieval._prepare_search(name, None, None)[1]
    catalog = store.catalog_ids()
    assert np.array_equal(np.sort(store.vectors().ids()), catalog)
    assert np.array_equal(store.bm25().ids, catalog)
    return catalog


def chunks_by_path(retrieval: Retrieval) -> dict[str, list[Chunk]]:
    with retrieval.db() as session:
        rows = session.execute(select(File.path, Chunk).join(Chunk.file).order_by(Chunk.ordinal)).all()
    out: dict[str, list[Chunk]] = {}
    for path, chunk in rows:
        out.setdefault(path, []).append(chunk)
    return out


def test_index_reports_every_file_and_loses_no_line(db_url: str, repo: Path, tmp_path: Path,
                                                   embedder: SentenceEmbedder) -> None:
    retrieval = open_retrieval(db_url, tmp_path / "indexes", embedder)
    retrieval.create_collection("repo", [repo])
    report = retrieval.index("repo")
    skipped = dict(report.skipped)
    for path, reason in {**CRAWL_SKIPS, **CONTENT_SKIPS}.items():
        assert reason in skipped[path], (path, skipped.get(path))
    assert {p: r for p, r in report.failed if p in EXPECTED_FAILS}.keys() == EXPECTED_FAILS.keys()
    assert all(EXPECTED_FAILS[p] in r for p, r in report.failed)
    assert report.indexed == len(EXPECTED_INDEXED)
    assert report.embedded == report.chunks_added == report.chunks_total > 0
    for path, chunks in chunks_by_path(retrieval).items():
        raw = (repo / path).read_bytes()
        text = raw.decode("cp1252") if path == "legacy.txt" else raw.decode("utf-8")
        lines = text.split("\n")
        covered = set()
        for c in chunks:  # each chunk is exactly the lines it cites
            assert c.text == "\n".join(lines[c.start_line - 1 : c.end_line]), (path, c.start_line)
            covered.update(range(c.start_line - 1, c.end_line))
        assert {i for i, line in enumerate(lines) if line.strip()} <= covered, path
    consistent(retrieval, "repo")


@pytest.mark.parametrize("topic", [0, 6, 11])
def test_search_finds_the_function_and_cites_its_lines(db_url: str, repo: Path, tmp_path: Path,
                                                       embedder: SentenceEmbedder, topic: int) -> None:
    retrieval = open_retrieval(db_url, tmp_path / "indexes", embedder)
    retrieval.create_collection("repo", [repo])
    retrieval.index("repo")
    name, doc, _ = TOPICS[topic]
    lines = (repo / "pkg/helpers.py").read_text().split("\n")
    def_line = next(i for i, line in enumerate(lines, start=1) if line.startswith(f"def {name}("))
    for mode in ("hybrid", "vector"):
        hit = retrieval.search("repo", doc.lower().rstrip("."), k=3, mode=mode)[0]
        assert hit.path == "pkg/helpers.py", (mode, hit)
        assert hit.start_line <= def_line <= hit.end_line, (mode, hit.citation, def_line)
        assert hit.citation == f"pkg/helpers.py:{hit.start_line}-{hit.end_line}"
        assert hit.absolute_path == repo / "pkg/helpers.py"


def test_filters_and_keyword_search(vector_url: str, repo: Path, tmp_path: Path, embedder: SentenceEmbedder) -> None:
    retrieval = open_retrieval(vector_url, tmp_path / "indexes", embedder)
    retrieval.create_collection("repo", [repo])
    retrieval.index("repo")
    hits = retrieval.search("repo", "crème brûlée", k=3, mode="bm25")
    assert hits[0].path == "legacy.txt" and "café crème" in hits[0].text  # cp1252 decoded right
    assert {h.path for h in retrieval.search("repo", "installation", k=10, path_glob="docs/*")} == {"docs/guide.md"}
    assert {h.language for h in retrieval.search("repo", "area", k=10, language="python")} == {"python"}
    assert retrieval.search("repo", "area", k=10, path_glob="nothing/*") == []
    guide = retrieval.search("repo", "restart the daemon with the offline flag", k=1)[0]
    assert guide.header == "docs/guide.md > Guide"  # the whole guide fits one chunk, inside its "# Guide"


def test_reindex_touches_only_what_changed(vector_url: str, repo: Path, tmp_path: Path,
                                           embedder: SentenceEmbedder) -> None:
    retrieval = open_retrieval(vector_url, tmp_path / "indexes", embedder)
    retrieval.create_collection("repo", [repo])
    first = retrieval.index("repo")

    again = retrieval.index("repo")
    assert (again.indexed, again.embedded, again.chunks_added, again.removed) == (0, 0, 0, 0)
    assert again.unchanged == first.files_total - len(first.failed)  # failures are retried, and fail again
    assert again.failed == first.failed
    assert again.skip_reasons() == first.skip_reasons()

    helpers = repo / "pkg/helpers.py"
    helpers.write_text(helpers.read_text().replace("c * 9 / 5 + 32", "32 + 1.8 * c"))
    (repo / "docs/guide.md").unlink()
    (repo / "pkg/new.py").write_text("def brand_new_function():\n    return 'fresh'\n")
    changed = retrieval.index("repo")
    assert (changed.indexed, changed.removed) == (2, 1)
    assert changed.embedded == 2  # the edited chunk of helpers.py and new.py; the rest came from the cache
    assert changed.reused > 0
    assert all(h.path != "docs/guide.md" for h in retrieval.search("repo", "installation daemon", k=20))
    assert retrieval.search("repo", "brand_new_function", k=1)[0].path == "pkg/new.py"
    consistent(retrieval, "repo")


def test_lost_index_files_are_rebuilt_from_the_catalog(sqlite_url: str, repo: Path, tmp_path: Path,
                                                       embedder: SentenceEmbedder) -> None:
    retrieval = open_retrieval(sqlite_url, tmp_path / "indexes", embedder)
    retrieval.create_collection("repo", [repo])
    retrieval.index("repo")
    before = retrieval.search("repo", "median of a list", k=3)
    shutil.rmtree(tmp_path / "indexes")
    fresh = open_retrieval(sqlite_url, tmp_path / "indexes", embedder)
    assert fresh.search("repo", "median of a list", k=3) == before
    consistent(fresh, "repo")


def test_collections_lifecycle_and_clear_errors(vector_url: str, repo: Path, tmp_path: Path,
                                                embedder: SentenceEmbedder) -> None:
    retrieval = open_retrieval(vector_url, tmp_path / "indexes", embedder)
    with pytest.raises(ValueError, match="not a folder"):
        retrieval.create_collection("x", [tmp_path / "missing"])
    retrieval.create_collection("repo", [repo / "pkg", repo / "docs"], ignore=["helpers.py"])
    with pytest.raises(ValueError, match="exists already"):
        retrieval.create_collection("repo", [repo])
    with pytest.raises(CollectionNotFoundError, match="rillet index PATH"):
        retrieval.search("nope", "x")
    with pytest.raises(ValueError, match="query is empty"):
        retrieval.search("repo", "  ")
    report = retrieval.index("repo")
    assert {p for p, _ in report.skipped} == {"pkg/alias.py", "pkg/up"}
    info = retrieval.get_collection("repo")
    assert info.chunks == report.chunks_total and info.indexed_at is not None
    hit = retrieval.search("repo", "circle area radius", k=1)[0]
    assert hit.path == "pkg/geometry.py" and hit.absolute_path == repo / "pkg/geometry.py"
    assert [c.name for c in retrieval.list_collections()] == ["repo"]
    retrieval.delete_collection("repo")
    assert retrieval.list_collections() == []
    assert not any((tmp_path / "indexes").iterdir())
    with retrieval.db() as session:
        assert session.scalars(select(Embedding.text_hash)).all() == []
        if session.bind.dialect.name == "postgresql":  # pgvector's table of the collection went with it
            assert session.scalars(text("SELECT tablename FROM pg_tables WHERE tablename LIKE 'rillet_vectors%'")
                                   ).all() == []


def test_ensure_collection_creates_or_checks_the_folder(sqlite_url: str, repo: Path, tmp_path: Path,
                                                        embedder: SentenceEmbedder) -> None:
    """The one rule behind `rillet index` and the page's Index button: a name is one folder."""
    from backbone.errors import UserError
    from retrieval.service import CollectionElsewhereError

    retrieval = open_retrieval(sqlite_url, tmp_path / "indexes", embedder)
    made = retrieval.ensure_collection("pkg", repo / "pkg" / ".." / "pkg")
    assert (made.roots, made.ignore) == ([str((repo / "pkg").resolve())], [])
    again = retrieval.ensure_collection("pkg", repo / "pkg", ignore=["helpers.py"])
    assert (again.roots, again.ignore, again.created_at) == (made.roots, ["helpers.py"], made.created_at)
    assert retrieval.ensure_collection("pkg", repo / "pkg").ignore == ["helpers.py"]  # no ignore given: kept
    with pytest.raises(CollectionElsewhereError, match="already indexes") as refused:
        retrieval.ensure_collection("pkg", repo / "docs")
    assert isinstance(refused.value, UserError)
    assert (refused.value.roots, refused.value.root) == (made.roots, str((repo / "docs").resolve()))
    assert [c.name for c in retrieval.list_collections()] == ["pkg"]
