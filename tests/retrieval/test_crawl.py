"""The crawler on a real tree: ignore rules, tool folders, links, special files and the size cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.crawl import Crawler
from tests.retrieval.repo import (
    CONTENT_SKIPS,
    CRAWL_SKIPS,
    EXPECTED_FAILS,
    EXPECTED_HIDDEN,
    EXPECTED_INDEXED,
    MAX_FILE_BYTES,
)


def crawl(root: Path, ignore: list[str] | None = None) -> dict[str, str | None]:
    return {e.path: e.skip for e in Crawler([root], ignore or [], max_bytes=MAX_FILE_BYTES)}


def test_every_file_is_read_skipped_with_a_reason_or_hidden(repo: Path) -> None:
    found = crawl(repo)
    for path, reason in CRAWL_SKIPS.items():
        assert found[path] is not None and reason in found[path], (path, found.get(path))
    for path in EXPECTED_INDEXED | set(CONTENT_SKIPS) | set(EXPECTED_FAILS):
        assert found[path] is None, (path, found[path])
    assert not EXPECTED_HIDDEN & set(found)
    assert set(found) == EXPECTED_INDEXED | set(CONTENT_SKIPS) | set(EXPECTED_FAILS) | set(CRAWL_SKIPS)


def test_symlink_loops_end_and_nothing_is_visited_twice(repo: Path) -> None:
    paths = [e.path for e in Crawler([repo])]
    assert len(paths) == len(set(paths))
    assert not any(p.startswith(("loop/", "pkg/up/")) for p in paths)


def test_collection_ignore_list_wins_over_gitignore_both_ways(repo: Path) -> None:
    found = crawl(repo, ["docs/", "!secret.txt"])
    assert "docs/guide.md" not in found
    assert found["secret.txt"] is None  # re-included although .gitignore hides it


def test_deeper_gitignore_overrides_the_outer_one(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / ".gitignore").write_text("*.txt\n")
    (tmp_path / "a" / ".gitignore").write_text("!keep.txt\n")
    for rel in ("top.txt", "a/keep.txt", "a/drop.txt"):
        (tmp_path / rel).write_text("x\n")
    assert set(crawl(tmp_path)) == {".gitignore", "a/.gitignore", "a/keep.txt"}


def test_several_roots_are_numbered(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "same.py").write_text("x = 1\n")
    entries = list(Crawler([tmp_path / "one", tmp_path / "two"]))
    assert sorted((e.root, e.path) for e in entries) == [(0, "same.py"), (1, "same.py")]


def test_a_root_that_is_not_a_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="not a folder"):
        list(Crawler([tmp_path / "missing"]))

