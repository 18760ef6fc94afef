"""Walk a collection's folders and say, for every file, whether it is worth reading and why not.

Only `stat` happens here, so that a re-index of an unchanged repository costs one walk. The rules:
`.gitignore` files at every level (deeper ones win, as in git), the collection's own ignore patterns
(which win over everything and may re-include with `!`), well-known tool folders (VCS, virtualenvs,
caches, build output, vendored code), binary and generated files by name, a size cap, and symbolic
links: followed only inside the root, each real folder visited once, so loops end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from backbone.errors import UserError
from retrieval.ignore_rules import IgnorePattern, compile_patterns, verdict
from retrieval.languages import BINARY_EXTENSIONS, DOCUMENTS, GENERATED_NAMES, MINIFIED_SUFFIXES, detect

log = logging.getLogger(__name__)


class FolderMissing(UserError, NotADirectoryError):
    """A collection's root is not a folder (moved or deleted since, or mistyped)."""


SKIPPED_FOLDERS = frozenset(
    [
        ".git", ".hg", ".svn", ".bzr", "node_modules", "bower_components", "__pycache__", ".venv", "venv",
        ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".cache", ".eggs", "build", "dist",
        "target", ".next", ".nuxt", ".gradle", ".idea", ".vscode", "site-packages", "vendor", "vendored",
        "_vendor", "third_party", ".ipynb_checkpoints"
    ]
)
MiB = 1 << 20
PATH_MAX_CHARS = 1024  # the catalog's path column (files.path)


@dataclass(frozen=True)
class Entry:
    """A file under root number `root`; `skip` says why it will not be read (None: read it)."""

    root: int
    path: str  # POSIX, relative to the root
    abs_path: Path
    size: int
    mtime: float
    language: str | None
    skip: str | None = None
    recorded: bool = True  # False: the path cannot be stored in the catalog (reported on every run instead)


@dataclass(frozen=True)
class _Rules:
    """The .gitignore files in force in one folder: (folder prefix, its patterns), outermost first."""

    layers: tuple[tuple[str, tuple[IgnorePattern, ...]], ...]

    def ignored(self, rel: str, is_dir: bool) -> bool:
        for prefix, patterns in reversed(self.layers):
            said = verdict(patterns, rel[len(prefix):], is_dir)
            if said is not None:
                return said
        return False


class Crawler:
    """Yields an `Entry` for every file of the roots that no ignore rule hides."""

    def __init__(self, roots: Sequence[Path | str], ignore: Sequence[str] = (), *,
                 max_bytes: int = 2 * MiB, max_document_bytes: int = 64 * MiB) -> None:
        self.roots = [Path(r).expanduser() for r in roots]
        self.user_rules = compile_patterns(ignore)
        self.max_bytes, self.max_document_bytes = max_bytes, max_document_bytes

    def __iter__(self) -> Iterator[Entry]:
        for number, root in enumerate(self.roots):
            yield from self._walk(number, root)

    def _user_says(self, rel: str, is_dir: bool) -> bool | None:
        return verdict(self.user_rules, rel, is_dir)

    def _hidden(self, rel: str, is_dir: bool, rules: _Rules) -> bool:
        verdict = self._user_says(rel, is_dir)
        return rules.ignored(rel, is_dir) if verdict is None else verdict

    def _walk(self, number: int, root: Path) -> Iterator[Entry]:
        real_root = root.resolve()
        if not real_root.is_dir():
            raise FolderMissing(f"{root} is not a folder; give the folder that holds the files to index.")
        first = real_root.stat()
        seen = {(first.st_dev, first.st_ino)}
        pending: list[tuple[Path, str, _Rules]] = [(real_root, "", _Rules(()))]
        while pending:
            folder, prefix, rules = pending.pop()
            rules = _with_gitignore(folder, prefix, rules)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                log.warning("Cannot list %s: %s", folder, exc.strerror)
                continue
            folders = []
            for entry in entries:
                rel = prefix + entry.name
                found = self._visit(number, real_root, entry, rel, rules, seen)
                if isinstance(found, Entry):
                    yield found
                elif found is not None:
                    folders.append((found, rel + "/", rules))
            pending.extend(reversed(folders))

    def _visit(self, number: int, real_root: Path, entry: os.DirEntry, rel: str, rules: _Rules,
               seen: set[tuple[int, int]]) -> Entry | Path | None:
        """An Entry for a file, the folder's path for a folder to descend into, None to pass over."""
        link = entry.is_symlink()
        target = Path(os.path.realpath(entry.path)) if link else Path(entry.path)
        try:
            st = entry.stat()  # follows links
        except OSError:
            return Entry(number, rel, Path(entry.path), 0, 0.0, None, "broken symbolic link")
        is_dir = entry.is_dir()
        if is_dir and (entry.name in SKIPPED_FOLDERS or entry.name.endswith(".egg-info")
                       or (target / "pyvenv.cfg").exists()):
            return None
        if self._hidden(rel, is_dir, rules):
            return None
        if not _decodable(entry.name):  # the folder is reported once: nothing under it could be stored either
            return Entry(number, shown_path(rel), Path(entry.path), 0, st.st_mtime, None,
                         f"undecodable file name: {os.fsencode(entry.name)!r}", recorded=False)
        if not is_dir and len(rel) > PATH_MAX_CHARS:
            return Entry(number, rel, Path(entry.path), st.st_size, st.st_mtime, None,
                         f"path longer than {PATH_MAX_CHARS} characters ({len(rel):,})", recorded=False)
        if link and not target.is_relative_to(real_root):
            return Entry(number, rel, Path(entry.path), 0, st.st_mtime, None,
                         f"symbolic link outside the indexed folder (to {shown_path(str(target))})")
        if is_dir:
            key = (st.st_dev, st.st_ino)
            if key in seen:  # a loop, or a second way to the same folder: its files are indexed once
                if not link:
                    return None
                return Entry(number, rel, Path(entry.path), 0, st.st_mtime, None,
                             "symbolic link to a folder that is indexed already (a loop or a duplicate)")
            seen.add(key)
            return target
        if link:
            own_path = shown_path(target.relative_to(real_root).as_posix())
            return Entry(number, rel, Path(entry.path), st.st_size, st.st_mtime, None,
                         f"symbolic link to a file indexed under its own path ({own_path})")
        if not entry.is_file():
            return Entry(number, rel, Path(entry.path), 0, st.st_mtime, None, "not a regular file")
        return self._file(number, Path(entry.path), rel, st.st_size, st.st_mtime)

    def _file(self, number: int, path: Path, rel: str, size: int, mtime: float) -> Entry:
        language = detect(path)
        name = path.name.lower()
        skip = None
        if path.suffix.lower() in BINARY_EXTENSIONS:
            skip = f"binary file ({path.suffix.lower()})"
        elif path.name in GENERATED_NAMES:
            skip = "generated lock file"
        elif name.endswith(MINIFIED_SUFFIXES):
            skip = "minified or bundled file"
        else:
            limit = self.max_document_bytes if language in DOCUMENTS else self.max_bytes
            if size > limit:
                skip = f"larger than the {limit / MiB:g} MiB limit ({size / MiB:.1f} MiB)"
        return Entry(number, rel, path, size, mtime, language, skip)


def _decodable(name: str) -> bool:
    """False for a name whose bytes are not UTF-8: Python hands it over with surrogate escapes, which
    no database column can store and no citation can show."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_path(rel: str) -> str:
    """A relative path as text that can be stored and printed: undecodable bytes as \\xNN escapes."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def _with_gitignore(folder: Path, prefix: str, rules: _Rules) -> _Rules:
    gitignore = folder / ".gitignore"
    if not gitignore.is_file():
        return rules
    try:
        lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        log.warning("Cannot read %s: %s", gitignore, exc.strerror)
        return rules
    return _Rules((*rules.layers, (prefix, compile_patterns(lines, str(gitignore)))))
