"""Allowed roots: only folders inside them, whatever the path says (`..`, symlinks, relative, files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.chat.folders import FolderNotAllowedError, allowed_folder


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    (root / "project" / "src").mkdir(parents=True)
    (root / "project" / "notes.txt").write_text("hi")
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "inner-link").symlink_to(root / "project")
    return root


def test_folders_inside_a_root_resolve(tree: Path) -> None:
    assert allowed_folder(str(tree / "project"), [tree]) == (tree / "project").resolve()
    assert allowed_folder(str(tree), [tree]) == tree.resolve()
    assert allowed_folder(f"{tree}/project/src/..", [tree]) == (tree / "project").resolve()
    assert allowed_folder(str(tree / "inner-link"), [tree]) == (tree / "project").resolve()
    assert allowed_folder(f"  {tree / 'project'}\n", [tree]) == (tree / "project").resolve()


@pytest.mark.parametrize(("path", "message"), [
    ("{root}/../secret", "outside the folders"),
    ("{root}/project/../../secret", "outside the folders"),
    ("{root}/escape", "outside the folders"),
    ("/", "outside the folders"),
    ("/surely/not/here", "outside the folders"),  # not "does not exist": that would leak what is outside
    ("project", "absolute path"),
    ("{root}/project/notes.txt", "not a folder"),
    ("{root}/nowhere", "does not exist"),
    ("", "Type the path"),
    ("{root}/pro\x00ject", "NUL"),
])
def test_anything_else_is_refused_with_a_reason(tree: Path, path: str, message: str) -> None:
    with pytest.raises(FolderNotAllowedError, match=message):
        allowed_folder(path.format(root=tree), [tree])


def test_a_root_that_is_a_prefix_of_another_folder_name_does_not_admit_it(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "database").mkdir()
    with pytest.raises(FolderNotAllowedError, match="outside"):
        allowed_folder(str(tmp_path / "database"), [tmp_path / "data"])
