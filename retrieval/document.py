"""What every parser produces: the text as lines, where each line came from, and an outline over them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass
class Section:
    """Lines [start, end) of a document that belong together: a definition, a heading's section, a page.

    `name` becomes part of the chunk header ("class Parser", "Installation"); `boundary` sections
    (PDF pages, notebook cells) are never merged with their neighbours, so a chunk has one page.
    """

    start: int
    end: int
    name: str | None = None
    children: list[Section] = field(default_factory=list)
    boundary: bool = False

    def shifted(self, offset: int) -> Section:
        return Section(self.start + offset, self.end + offset, self.name,
                       [c.shifted(offset) for c in self.children], self.boundary)


@dataclass
class Document:
    """Parsed text. `line_numbers[i]` is the 1-based line (or paragraph) of the source that line i
    came from (None: i + 1); `pages[i]` the PDF page or notebook cell of line i (None: not paged)."""

    language: str
    lines: list[str]
    outline: list[Section] = field(default_factory=list)
    line_numbers: list[int] | None = None
    pages: list[int] | None = None

    def source_line(self, i: int) -> int:
        return self.line_numbers[i] if self.line_numbers is not None else i + 1


def split_lines(text: str) -> list[str]:
    """Lines as an editor counts them (\\n, \\r\\n or \\r), unlike str.splitlines, which also breaks
    at form feeds and Unicode separators and would shift every line number after them."""
    return LINE_BREAK.split(text)


def nest_headings(headings: list[tuple[int, int, str]], end: int) -> list[Section]:
    """Sections from (line, level, title) headings in order: each runs to the next heading of the same
    or a higher level, and holds the deeper ones as children."""
    roots: list[Section] = []
    stack: list[tuple[int, Section]] = []
    for line, level, title in headings:
        while stack and stack[-1][0] >= level:
            stack.pop()[1].end = line
        section = Section(line, end, title)
        (stack[-1][1].children if stack else roots).append(section)
        stack.append((level, section))
    return roots
