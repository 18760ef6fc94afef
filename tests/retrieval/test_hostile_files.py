"""Files an outside probe used to break the indexer with: names that are not UTF-8, paths too long for the
catalog, NUL characters deep in a text file, and a database that refuses one file's rows. Each is skipped
or failed with its reason; the rest of the run goes on. On SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from retrieval.catalog import Chunk, File
from retrieval.embedder import SentenceEmbedder
from tests.retrieval.conftest import open_retrieval
from tests.retrieval.test_service import consistent


def _bytes_path(folder: Path, name: bytes) -> bytes:
    return os.path.join(os.fsencode(folder), name)


def test_undecodable_names_are_skipped_with_their_bytes_and_the_rest_is_indexed(
        db_url: str, tmp_path: Path, embedder: SentenceEmbedder) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "good.py").write_text("def good():\n    return 'fine'\n")
    with open(_bytes_path(repo, b"\xff\xfe.py"), "wb") as handle:
        handle.write(b"def hidden():\n    return 1\n")
    os.mkdir(_bytes_path(repo, b"dir\xe9"))
    with open(_bytes_path(repo, b"dir\xe9/inside.py"), "wb") as handle:
        handle.write(b"x = 1\n")
    retrieval = open_retrieval(db_url, tmp_path / "indexes", embedder)
    retrieval.create_collection("repo", [repo])

    for _ in range(2):  # the second run is incremental: the same report, nothing changed
        report = retrieval.index("repo")
        skipped = dict(report.skipped)
        assert skipped["\\xff\\xfe.py"] == "undecodable file name: b'\\xff\\xfe.py'"
        assert skipped["dir\\xe9"] == "undecodable file name: b'dir\\xe9'"  # the folder once, not its files
        assert report.failed == [] and report.files_total == 3
    with retrieval.db() as session:
        assert session.scalars(select(File.path)).all() == ["good.py"]
    assert retrieval.search("repo", "good", k=1)[0].path == "good.py"
    consistent(retrieval, "repo")


def test_a_path_too_long_for_the_catalog_is_skipped(db_url: str, tmp_path: Path, embedder: SentenceEmbedder) -> None:
    repo = tmp_path / "repo"
    deep = repo.joinpath(*["d" * 200] * 6)  # 1,206 characters: the catalog keeps at most 1,024
    deep.mkdir(parents=True)
    (deep / "far.py").write_text("FAR = 1\n")
    (repo / "near.py").write_text("NEAR = 1\n")
    retrieval = open_retrieval(db_url, tmp_path / "indexes", embedder)
    retrieval.create_collection("repo", [repo])
    report = retrieval.index("repo")
    (reason,) = [r for p, r in report.skipped if p.endswith("far.py")]
    assert reason.startswith("path longer than 1024 characters")
    assert report.indexed == 1 and report.failed == []
    consistent(retrieval, "repo")


def test_nul_characters_past_the_binary_sniff_are_dropped_from_the_text(
        db_url: str, tmp_path: Path, embedder: SentenceEmbedder) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    text = "# notes\n" + "plain words here\n" * 600 + "after\x00the nul\n"  # NUL beyond the first 8 KiB
    (repo / "notes.txt").write_text(text)
    (repo / "wide.txt").write_bytes("\ufeffwide\x00text\n".encode("utf-16-le"))  # UTF-16 with a NUL character
    retrieval = open_retrieval(db_url, tmp_path / "indexes", embedder)
    retrieval.create_collection("repo", [repo])
    report = retrieval.index("repo")
    assert report.indexed == 2 and report.failed == [], report.failed
    with retrieval.db() as session:
        texts = session.scalars(select(Chunk.text)).all()
    assert not any("\x00" in t for t in texts)
    assert any("afterthe nul" in t for t in texts) and any("widetext" in t for t in texts)


def test_a_file_whose_rows_the_database_refuses_fails_alone(db_url: str, tmp_path: Path, embedder: SentenceEmbedder,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import retrieval.indexer as indexer

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("a", "b", "c"):
        (repo / f"{name}.py").write_text(f"def {name}():\n    return '{name}'\n")
    original = indexer.Indexer._write_files

    def refuse_b(self, session, batch):  # type: ignore[no-untyped-def]
        if any(o.entry.path == "b.py" and o.status == "indexed" for o in batch):
            raise IntegrityError("INSERT INTO files ...", {}, Exception("value refused by the database"))
        return original(self, session, batch)

    monkeypatch.setattr(indexer.Indexer, "_write_files", refuse_b)
    retrieval = open_retrieval(db_url, tmp_path / "indexes", embedder)
    retrieval.create_collection("repo", [repo])
    report = retrieval.index("repo")
    assert report.indexed == 2
    assert report.failed == [("b.py", "cannot be recorded in the catalog: value refused by the database")]
    with retrieval.db() as session:
        rows = dict(session.execute(select(File.path, File.status)).all())
    assert rows == {"a.py": "indexed", "b.py": "failed", "c.py": "indexed"}
    consistent(retrieval, "repo")

    monkeypatch.setattr(indexer.Indexer, "_write_files", original)
    again = retrieval.index("repo")  # a failed file is tried again on the next run
    assert again.indexed == 1 and again.failed == []
    consistent(retrieval, "repo")
