"""Outlines of prose: Markdown and reStructuredText headings, nested by level.

Paragraphs need no outline: the chunker splits any run of lines without sections at blank lines.
"""

from __future__ import annotations

import re

from retrieval.document import Section, nest_headings

ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
RST_ADORNMENT = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")


def markdown_outline(lines: list[str]) -> list[Section]:
    headings: list[tuple[int, int, str]] = []
    fence: str | None = None
    for i, line in enumerate(lines):
        opened = FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
            continue
        atx = ATX.match(line)
        if atx:
            headings.append((i, len(atx.group(1)), atx.group(2).strip() or "(untitled)"))
        elif (i > 0 and lines[i - 1].strip() and SETEXT.match(line) and not ATX.match(lines[i - 1])
              and not (headings and headings[-1][0] == i - 1)):
            headings.append((i - 1, 1 if line.strip()[0] == "=" else 2, lines[i - 1].strip()))
    return nest_headings(headings, len(lines))


def rst_outline(lines: list[str]) -> list[Section]:
    """Titles underlined (and maybe overlined) with punctuation; levels in order of first appearance."""
    styles: list[tuple[str, bool]] = []
    headings: list[tuple[int, int, str]] = []
    i = 0
    while i < len(lines) - 1:
        title, under = lines[i], lines[i + 1]
        adornment = RST_ADORNMENT.match(under)
        if title.strip() and not RST_ADORNMENT.match(title) and adornment \
                and len(under.rstrip()) >= len(title.rstrip()):
            over = i > 0 and lines[i - 1].strip() == under.strip()
            style = (adornment.group(1), over)
            if style not in styles:
                styles.append(style)
            headings.append((i - 1 if over else i, styles.index(style) + 1, title.strip()))
            i += 2
            continue
        i += 1
    return nest_headings(headings, len(lines))
