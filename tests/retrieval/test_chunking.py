"""Chunking on random documents and outlines: nothing lost, spans exact, windows respected, names right."""

from __future__ import annotations

import random

import pytest

from retrieval.chunking import HEADER_SEPARATOR, Chunker, PlannedChunk
from retrieval.document import Document, Section
from retrieval.embedder import count_tokens
from retrieval.parse import parse

WORDS = [
    "alpha", "beta", "gamma", "delta", "parse_value", "readHeader", "compute", "42", "x", "=", "(", ")",
    "{", "}", ";", ":", "return", "self", "if", "else", "naïve", "café", "def", "class"
]
MAX_TOKENS = 256


def random_lines(rng: random.Random, n: int) -> list[str]:
    lines = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.15:
            lines.append("")
        elif kind < 0.17:  # a line longer than the whole window
            lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(300, 700))))
        else:
            lines.append("    " * rng.randint(0, 3) + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25))))
    return lines


def random_outline(rng: random.Random, start: int, end: int, depth: int) -> list[Section]:
    """Consecutive random spans of [start, end), most of them sections (some named, some boundaries),
    each with its own random children."""
    sections, cursor = [], start
    while cursor < end and depth < 4:
        size = rng.randint(1, max(1, (end - start) // 3))
        a, b = cursor, min(end, cursor + size)
        if rng.random() < 0.7:
            name = rng.choice([None, f"def f{a}", f"class C{a}"])
            sections.append(Section(a, b, name, random_outline(rng, a, b, depth + 1), boundary=rng.random() < 0.1))
        cursor = b + rng.randint(0, 2)
    return sections


def enclosing_names(sections: list[Section], first: int, last: int) -> list[str]:
    """Brute force: names of the sections holding lines first..last (0-based, inclusive), outermost first."""
    for s in sections:
        if s.start <= first and last < s.end:
            return ([s.name] if s.name else []) + enclosing_names(s.children, first, last)
    return []


def check(doc: Document, chunks: list[PlannedChunk], title: str) -> None:
    covered = set()
    pieces: dict[int, list[str]] = {}
    for c in chunks:
        first, last = c.start_line - 1, c.end_line - 1
        assert 0 <= first <= last < len(doc.lines)
        body = doc.lines[first : last + 1]
        if c.text == "\n".join(body):
            covered.update(range(first, last + 1))
        else:  # a piece of one overlong line
            assert first == last, c
            pieces.setdefault(first, []).append(c.text)
        assert count_tokens([c.embed_text])[0] + 2 <= MAX_TOKENS, c
        names = enclosing_names(doc.outline, first, last)
        assert c.header == HEADER_SEPARATOR.join([title, *names]), (c, names)
    for line, parts in pieces.items():
        assert "".join(parts) == doc.lines[line]
        covered.add(line)
    assert {i for i, line in enumerate(doc.lines) if line.strip()} <= covered
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


@pytest.mark.parametrize(("seed", "n"), [(0, 1), (1, 63), (2, 500), (3, 63), (4, 500)])
def test_random_documents_lose_nothing(seed: int, n: int) -> None:
    rng = random.Random(seed)
    lines = random_lines(rng, n)
    doc = Document("text", lines, random_outline(rng, 0, n, 0))
    chunks = Chunker(count_tokens, max_tokens=MAX_TOKENS).chunk(doc, "dir/file.txt")
    check(doc, chunks, "dir/file.txt")


def test_chunks_never_cross_a_boundary_section() -> None:
    rng = random.Random(7)
    lines = random_lines(rng, 120)
    outline = [Section(0, 40, "page 1", boundary=True), Section(40, 41, "page 2", boundary=True),
               Section(41, 120, "page 3", boundary=True)]
    pages = [1] * 40 + [2] + [3] * 79
    doc = Document("pdf", lines, outline, list(range(1, 121)), pages)
    for c in Chunker(count_tokens).chunk(doc, "a.pdf"):
        assert len(set(pages[c.start_line - 1 : c.end_line])) == 1
        assert c.page == pages[c.start_line - 1]


def test_prose_chunks_are_well_filled() -> None:
    rng = random.Random(11)
    paragraphs = [" ".join(rng.choice(WORDS[:7]) for _ in range(rng.randint(10, 60))) for _ in range(200)]
    doc = Document("text", "\n\n".join(paragraphs).split("\n"))
    chunks = Chunker(count_tokens).chunk(doc, "t.txt")
    sizes = [count_tokens([c.embed_text])[0] for c in chunks]
    assert sum(sizes) / len(sizes) > 0.6 * MAX_TOKENS


def test_python_chunks_cite_their_own_lines() -> None:
    import inspect

    import retrieval.chunking as module

    source = inspect.getsource(module)
    doc = parse(source.encode(), "python")
    chunks = Chunker(count_tokens).chunk(doc, "retrieval/chunking.py")
    check(doc, chunks, "retrieval/chunking.py")
    lines = source.split("\n")
    cut = next(c for c in chunks if "def best_break" in c.text)
    assert cut.text.startswith(lines[cut.start_line - 1])
    assert "class _Run" in cut.header
