"""`rillet index`, `rillet search`, `rillet collections` and watch mode, on a real folder."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from retrieval.embedder import SentenceEmbedder
from retrieval.watch import watch_collection
from tests.retrieval.conftest import open_retrieval

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RILLET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("RILLET_DATABASE_URL", raising=False)
    return tmp_path / "data"


def test_index_then_search_then_list(repo: Path, data_dir: Path, embedder: SentenceEmbedder) -> None:
    result = runner.invoke(cli, ["index", str(repo), "-c", "demo", "--max-file-mb", "0.0625"])
    assert result.exit_code == 0, result.output
    assert "indexed (new or changed)" in result.output
    for reason, count in (("binary file", 2), ("empty file", 1), ("not a regular file", 1)):  # grouped by kind
        assert f"skipped: {reason} │ {count}" in " ".join(result.output.split())
    assert "failed broken.txt: not valid UTF-8" in " ".join(result.output.split())

    result = runner.invoke(cli, ["search", "area of a circle from its radius", "-c", "demo", "-k", "2"])
    assert result.exit_code == 0, result.output
    assert " 1. pkg/geometry.py:" in result.output

    result = runner.invoke(cli, ["collections"])
    assert result.exit_code == 0 and "demo" in result.output


def test_clear_errors(repo: Path, data_dir: Path, tmp_path: Path, embedder: SentenceEmbedder) -> None:
    result = runner.invoke(cli, ["search", "anything", "-c", "missing"])
    assert result.exit_code == 2 and "No collection named 'missing'" in result.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.py").write_text("x = 1\n")
    assert runner.invoke(cli, ["index", str(tmp_path / "other"), "-c", "demo"]).exit_code == 0
    result = runner.invoke(cli, ["index", str(repo), "-c", "demo"])
    assert result.exit_code == 2 and "Choose another --collection name" in " ".join(result.output.split())
    result = runner.invoke(cli, ["index", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a folder" in result.output
    result = runner.invoke(cli, ["collections", "--delete", "demo"])
    assert result.exit_code == 0 and "Deleted" in result.output


def test_watch_reindexes_after_a_change(sqlite_url: str, tmp_path: Path, embedder: SentenceEmbedder) -> None:
    folder = tmp_path / "watched"
    folder.mkdir()
    (folder / "a.py").write_text("def first():\n    return 1\n")
    retrieval = open_retrieval(sqlite_url, tmp_path / "indexes", embedder)
    retrieval.create_collection("w", [folder])
    reports: queue.Queue = queue.Queue()
    stop = threading.Event()
    worker = threading.Thread(target=watch_collection, args=(retrieval, "w", reports.put),
                              kwargs={"stop": stop, "debounce_ms": 200})
    worker.start()
    try:
        assert reports.get(timeout=60).indexed == 1
        (folder / "b.py").write_text("def second_function_added_later():\n    return 2\n")
        assert reports.get(timeout=60).indexed == 1
        assert retrieval.search("w", "second_function_added_later", k=1)[0].path == "b.py"
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive()


def test_names_with_markup_and_line_breaks_are_printed_on_one_line(tmp_path: Path, data_dir: Path,
                                                                   embedder: SentenceEmbedder) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "two\nlines [bold].py").write_text("def kettle_boils():\n    return 'whistle'\n")
    result = runner.invoke(cli, ["index", str(folder), "-c", "[/x] odd"])
    assert result.exit_code == 0, result.output
    assert "Collection '[/x] odd'" in result.output

    result = runner.invoke(cli, ["search", "kettle boils whistle", "-c", "[/x] odd", "-k", "1"])
    assert result.exit_code == 0, result.output
    assert " 1. two\\nlines [bold].py:1-2" in result.output.splitlines()[0]

    result = runner.invoke(cli, ["collections"])
    assert result.exit_code == 0 and "[/x] odd" in result.output, result.output
    result = runner.invoke(cli, ["search", "anything", "-c", "[/y]"])
    assert result.exit_code == 2 and "No collection named '[/y]'" in result.output
    result = runner.invoke(cli, ["collections", "--delete", "[/x] odd"])
    assert result.exit_code == 0 and "Deleted collection '[/x] odd'." in result.output
