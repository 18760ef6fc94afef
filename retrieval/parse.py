"""From a file's bytes to a `Document`: pick the reader by format, then the outline by language."""

from __future__ import annotations

from retrieval import formats
from retrieval.code_outline import outline as code_outline
from retrieval.document import Document, Section, split_lines
from retrieval.prose_outline import markdown_outline, rst_outline
from retrieval.read import check_not_minified, decode

READERS = {"pdf": formats.pdf, "docx": formats.docx, "html": formats.html, "ipynb": formats.notebook}


def parse(data: bytes, language: str | None) -> Document:
    """Raises SkipFile (binary, minified) or ReadError (undecodable, damaged) with the reason.

    NUL characters are dropped from the text (a text file past the binary sniff, UTF-16, a PDF can hold
    them): no database can store them in a text column, and they carry nothing to search for.
    """
    if language in READERS:
        return _without_nul(READERS[language](data))
    text, _ = decode(data)
    text = text.replace("\x00", "")
    language = language or "text"
    check_not_minified(text, language)
    lines = split_lines(text)
    if language == "markdown":
        outline = markdown_outline(lines)
    elif language == "rst":
        outline = rst_outline(lines)
    else:
        outline = code_outline("\n".join(lines), lines, language)
    return Document(language, lines, outline)


def _without_nul(document: Document) -> Document:
    document.lines = [line.replace("\x00", "") for line in document.lines]

    def clean(sections: list[Section]) -> None:
        for section in sections:
            section.name = section.name.replace("\x00", "") if section.name else section.name
            clean(section.children)

    clean(document.outline)
    return document
