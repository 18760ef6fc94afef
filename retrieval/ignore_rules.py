"""Gitignore patterns evaluated the way git does for a walk that decides each folder before entering it.

pathspec translates each glob into a regular expression; the trailing `/` (folders only) and the choice
of which pattern decides are done here. pathspec's own `GitIgnoreSpec` mistranslates folder patterns made
only of wildcards (`*/`, `**/`), so the common "ignore everything but folders and *.py" file
(`*`, `!*/`, `!*.py`) hid every sub-folder.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pathspec.patterns.gitignore import GitIgnorePatternError
from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

log = logging.getLogger(__name__)

_UNESCAPED_TRAILING_SPACES = re.compile(r"(?<!\\) +$")


@dataclass(frozen=True)
class IgnorePattern:
    regex: re.Pattern[str]
    ignores: bool  # False for a re-including `!` pattern
    folders_only: bool  # the line ended in `/`


def compile_patterns(lines: Iterable[str], source: str = "ignore list") -> tuple[IgnorePattern, ...]:
    """The patterns of a .gitignore file's lines; blank lines and comments drop out, a line pathspec
    cannot read is logged and skipped (git skips it too)."""
    patterns = []
    for line in lines:
        line = _UNESCAPED_TRAILING_SPACES.sub("", line.rstrip("\r\n"))
        folders_only = line.endswith("/") and line.rstrip("/") not in ("", "!")
        body = line.rstrip("/") if folders_only else line
        try:
            pattern = GitIgnoreSpecPattern(body)
        except GitIgnorePatternError as exc:
            log.warning("Skipping ignore pattern %r in %s: %s", line, source, exc)
            continue
        if pattern.include is not None and pattern.regex is not None:
            patterns.append(IgnorePattern(pattern.regex, bool(pattern.include), folders_only))
    return tuple(patterns)


def verdict(patterns: tuple[IgnorePattern, ...], rel: str, is_dir: bool) -> bool | None:
    """True (ignored) or False (re-included) by the last pattern that matches `rel` itself, None if none does.

    A match through a parent folder (pathspec's `ps_d` group) does not count: the walk decided that folder
    before entering it, and git never re-includes a file inside an ignored folder.
    """
    for pattern in reversed(patterns):
        if pattern.folders_only and not is_dir:
            continue
        match = pattern.regex.search(rel)
        if match is not None and match.groupdict().get("ps_d") is None:
            return pattern.ignores
    return None
