"""The crawler's ignore rules against git itself: on trees with tricky .gitignore files, the files the
crawler yields must be exactly those `git ls-files --others --exclude-standard` lists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from retrieval.crawl import Crawler
from retrieval.ignore_rules import compile_patterns, verdict

FILES = [
    "top.py", "README", "notes.txt", "root_only.txt", "space.txt", "!bang", "important.log", "debug.log",
    "src/a.py", "src/x.txt", "src/root_only.txt", "src/deep/b.py", "src/deep/c.txt", "src/gen/out.py",
    "out/keep.txt", "out/drop.txt", "docs/a.md", "docs/sub/b.md", "docs/sub/c.txt",
    "a/b", "a/x/y/b", "a/x/c", "foo/one", "foo/bar/two", "sub/local.txt", "sub/deeper/local.txt",
    "sub/trace.log", "sub/x.py",
]
CASES = {
    "everything but folders and python": {".gitignore": "*\n!*/\n!*.py\n"},
    "folders, negation and anchors": {
        ".gitignore": "out/\n!out/keep.txt\n*.log\n!important.log\n/root_only.txt\ndocs/**/*.md\n",
        "sub/.gitignore": "!*.log\n/local.txt\n",
    },
    "double stars, escapes, comments, spaces": {
        ".gitignore": "**/gen/\na/**/b\nfoo/**\n\\!bang\n# a comment\nspace.txt   \n",
    },
    "re-include inside an ignored folder is impossible": {".gitignore": "src\n!src/a.py\nsub/*\n!sub/x.py\n"},
}


def make_tree(root: Path, ignores: dict[str, str]) -> None:
    for rel in FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"{rel}\n")
    for rel, text in ignores.items():
        (root / rel).write_text(text)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is the reference here and is not installed")
@pytest.mark.parametrize("case", CASES)
def test_crawler_sees_what_git_sees(tmp_path: Path, case: str) -> None:
    make_tree(tmp_path, CASES[case])
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    listed = subprocess.run(["git", "-C", str(tmp_path), "ls-files", "--others", "--exclude-standard", "-z"],
                            check=True, capture_output=True, text=True).stdout
    expected = {p for p in listed.split("\0") if p}
    assert expected and expected != set(FILES)  # the case ignores something and keeps something
    assert {e.path for e in Crawler([tmp_path])} == expected


def test_verdict_is_decided_by_the_last_pattern_matching_the_path_itself() -> None:
    patterns = compile_patterns(["*", "!*/", "!*.py"])
    assert verdict(patterns, "src", is_dir=True) is False
    assert verdict(patterns, "src/x.txt", is_dir=False) is True
    assert verdict(patterns, "src/a.py", is_dir=False) is False
    assert verdict(compile_patterns(["build/"]), "build", is_dir=False) is None  # folders only
    assert verdict(compile_patterns(["# only a comment", ""]), "x", is_dir=False) is None
