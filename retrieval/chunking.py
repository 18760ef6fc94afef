"""Split a parsed document into chunks the embedding model reads whole, cut where the outline says.

Every line boundary gets a cost from the outline: the edge of a top-level definition or section costs
least, the edge of something nested a little more, a blank line inside a section more, a break in the
middle of a statement most. Each chunk is filled up to the token budget and then ends at the boundary
with the best trade of cost against fullness, so chunks are both whole units and near the window.
The header names the file and every definition or heading that encloses the chunk
("path > class Parser > def feed"). Only a cut inside a unit repeats a few lines (overlap). Every
non-blank line lands in a chunk and no chunk exceeds the model's window, so no text is lost.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate

from retrieval.document import Document, Section

HEADER_SEPARATOR = " > "
MAX_HEADER_TOKENS = 48
MID_UNIT = 10.0  # cost of a break with no structure around it (inside a statement or paragraph)
FULLNESS = 2.0  # how much a fuller chunk may pay in cost: one nesting level is worth half a window
MIN_FILL = 0.2  # a chunk ends before this share of the window only at a forced break


@dataclass(frozen=True)
class PlannedChunk:
    ordinal: int
    start_line: int  # 1-based, in the source file (paragraph for DOCX, line of the page or cell)
    end_line: int
    page: int | None
    header: str
    text: str

    @property
    def embed_text(self) -> str:
        """What the model and BM25 see: where the text is, then the text."""
        return f"{self.header}\n{self.text}"


class Chunker:
    """`count_tokens` gives the model's token count of each string (without special tokens)."""

    def __init__(self, count_tokens: Callable[[Sequence[str]], list[int]], max_tokens: int = 256,
                 overlap_tokens: int = 24, special_tokens: int = 2, min_unit_tokens: int = 32) -> None:
        self.count_tokens = count_tokens
        self.max_tokens, self.overlap_tokens, self.special_tokens = max_tokens, overlap_tokens, special_tokens
        self.min_unit_tokens = min_unit_tokens

    def chunk(self, doc: Document, title: str) -> list[PlannedChunk]:
        run = _Run(self, doc, title)
        run.cut()
        return run.chunks


class _Run:
    """The state of chunking one document."""

    def __init__(self, chunker: Chunker, doc: Document, title: str) -> None:
        self.chunker, self.doc, self.title = chunker, doc, title
        n = len(doc.lines)
        self.cum = [0, *accumulate(chunker.count_tokens(doc.lines) if n else [])]
        self.blank = [not line.strip() for line in doc.lines]
        self.cost = [MID_UNIT] * (n + 1)
        self.forced: set[int] = {0, n}
        self.owner = [-1] * n  # innermost section of each line
        self.sections: list[tuple[int, str | None, int]] = []  # (end, name, index of the parent or -1)
        self.depth: list[int] = []
        self.headers: dict[tuple[str, ...], tuple[str, int]] = {}
        self.paint(doc.outline, -1, 0, 0, n, (), opened=self.tokens(0, n) > self.budget(()))
        for b in range(1, n):
            if self.blank[b - 1] and not self.blank[b]:  # a paragraph starts
                self.cost[b] = min(self.cost[b], self.depth_of(self.owner[b]) + 1)
        self.chunks: list[PlannedChunk] = []

    def paint(self, sections: list[Section], parent: int, depth: int, low: int, high: int,
              names: tuple[str, ...], opened: bool) -> None:
        """Record the outline per line. In an `opened` parent (one too large for a chunk), every named
        section of at least `min_unit_tokens` gets chunk edges of its own, so an edit re-chunks (and
        re-embeds) that section only, never its neighbours."""
        for section in sorted(sections, key=lambda s: s.start):
            start, end = max(section.start, low), min(section.end, high)
            if end <= start:
                continue
            index = len(self.sections)
            self.sections.append((end, section.name, parent))
            self.depth.append(depth)
            self.owner[start:end] = [index] * (end - start)
            edge = depth + (0.0 if section.name else 0.5)
            self.cost[start] = min(self.cost[start], edge)
            self.cost[end] = min(self.cost[end], edge)
            inner = (*names, section.name) if section.name else names
            size = self.tokens(start, end)
            if section.boundary or (opened and section.name and size >= self.chunker.min_unit_tokens):
                self.forced |= {start, end}
            self.paint(section.children, index, depth + 1, start, end, inner,
                       opened=(opened or section.boundary) and size > self.budget(inner))
            low = end

    def depth_of(self, index: int) -> int:
        return self.depth[index] if index >= 0 else -1

    def tokens(self, start: int, end: int) -> int:
        return self.cum[end] - self.cum[start]

    def names(self, index: int, end: int) -> tuple[str, ...]:
        """Names of the sections that hold the whole chunk from a line owned by `index` to `end`."""
        while index >= 0 and self.sections[index][0] < end:
            index = self.sections[index][2]
        names = []
        while index >= 0:
            _, name, index = self.sections[index]
            if name:
                names.append(name)
        return tuple(reversed(names))

    def header(self, names: tuple[str, ...]) -> tuple[str, int]:
        """The header for these enclosing names and its token count, shortened if it is very long."""
        if names not in self.headers:
            text = HEADER_SEPARATOR.join((self.title, *names))
            count = self.chunker.count_tokens([text])[0]
            if count > MAX_HEADER_TOKENS:
                text = HEADER_SEPARATOR.join((self.title[-80:], *(n[:40] for n in names[-2:])))
                count = self.chunker.count_tokens([text])[0]
            self.headers[names] = (text, count)
        return self.headers[names]

    def budget(self, names: tuple[str, ...]) -> int:
        return max(16, self.chunker.max_tokens - self.chunker.special_tokens - self.header(names)[1])

    def cut(self) -> None:
        n, forced = len(self.doc.lines), sorted(self.forced)
        i = 0
        while i < n:
            if self.blank[i]:
                i += 1
                continue
            # The longest header this chunk can get is that of the innermost section at its start.
            budget = self.budget(self.names(self.owner[i], i + 1))
            if self.tokens(i, i + 1) > budget:
                self.split_line(i, budget)
                i += 1
                continue
            limit = forced[bisect_right(forced, i)]
            fits = min(limit, bisect_right(self.cum, self.cum[i] + budget) - 1)
            end = fits if fits == limit else self.best_break(i, fits, budget)
            self.emit(i, end)
            if end < limit and self.cost[end] >= MID_UNIT:  # cut inside a unit: repeat a little
                back = end
                while back - 1 > i and self.tokens(back - 1, end) <= self.chunker.overlap_tokens:
                    back -= 1
                i = back
            else:
                i = end

    def best_break(self, start: int, fits: int, budget: int) -> int:
        best, best_score = fits, math.inf
        for b in range(fits, start, -1):
            fill = self.tokens(start, b) / budget
            if fill < MIN_FILL and best_score < math.inf:
                break
            score = self.cost[b] - FULLNESS * fill
            if score < best_score:
                best, best_score = b, score
        return best

    def split_line(self, i: int, budget: int) -> None:
        """A single line longer than the window: consecutive pieces of it, cut at spaces."""
        line = self.doc.lines[i]
        size = math.ceil(len(line) / math.ceil(self.tokens(i, i + 1) / (budget * 0.8)))
        start = 0
        while start < len(line):
            end = min(len(line), start + size)
            if end < len(line):
                space = line.rfind(" ", start + size // 2, end)
                end = space + 1 if space > 0 else end
            self.emit(i, i + 1, line[start:end])
            start = end

    def emit(self, start: int, end: int, text: str | None = None) -> None:
        while end > start and self.blank[end - 1]:
            end -= 1
        if start >= end:
            return
        doc = self.doc
        self.chunks.append(PlannedChunk(
            ordinal=len(self.chunks),
            start_line=doc.source_line(start),
            end_line=doc.source_line(end - 1),
            page=doc.pages[start] if doc.pages is not None else None,
            header=self.header(self.names(self.owner[start], end))[0],
            text=text if text is not None else "\n".join(doc.lines[start:end]),
        ))
