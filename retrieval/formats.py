"""Text out of formats that are not plain text: PDF (per page), DOCX, HTML and Jupyter notebooks.

Each keeps a way back to the source: PDF lines carry their page, DOCX lines their paragraph number,
HTML lines the source line of their element, notebook lines their cell and line within the cell.
"""

from __future__ import annotations

import io
import logging

from retrieval.code_outline import python_outline
from retrieval.document import Document, Section, nest_headings, split_lines
from retrieval.prose_outline import markdown_outline
from retrieval.read import ReadError, decode

log = logging.getLogger(__name__)


def pdf(data: bytes) -> Document:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ReadError("the PDF is password-protected; save an unprotected copy to index it")
        texts = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise ReadError(f"damaged PDF ({exc})") from exc
    lines: list[str] = []
    numbers: list[int] = []
    pages: list[int] = []
    outline: list[Section] = []
    for page_number, text in enumerate(texts, start=1):
        page_lines = split_lines(text.strip())
        if not any(line.strip() for line in page_lines):
            continue
        outline.append(Section(len(lines), len(lines) + len(page_lines), f"page {page_number}", boundary=True))
        lines += page_lines
        numbers += range(1, len(page_lines) + 1)
        pages += [page_number] * len(page_lines)
    if not lines:
        raise ReadError("the PDF has no text layer (scanned pages?); run OCR on it first")
    return Document("pdf", lines, outline, numbers, pages)


def docx(data: bytes) -> Document:
    """Paragraphs and table rows in document order; 'Heading N' and 'Title' styles make the outline."""
    import docx as python_docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = python_docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises many types for a broken package
        raise ReadError(f"damaged or unsupported DOCX ({exc})") from exc
    lines: list[str] = []
    numbers: list[int] = []
    headings: list[tuple[int, int, str]] = []
    for number, block in enumerate(document.iter_inner_content(), start=1):
        if isinstance(block, Paragraph):
            style = block.style.name if block.style is not None else ""
            level = 1 if style == "Title" else _heading_level(style)
            if level and block.text.strip():
                headings.append((len(lines), level, block.text.strip()))
            texts = split_lines(block.text)
        elif isinstance(block, Table):
            texts = [" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows]
        else:
            continue
        lines += texts
        numbers += [number] * len(texts)
    return Document("docx", lines, nest_headings(headings, len(lines)), numbers)


def _heading_level(style: str) -> int:
    if style.startswith("Heading "):
        tail = style.removeprefix("Heading ")
        return int(tail) if tail.isdigit() else 0
    return 0


BLOCK_TAGS = frozenset(
    [
        "address", "article", "aside", "blockquote", "br", "caption", "dd", "details", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
        "hr", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "td", "tfoot",
        "th", "thead", "title", "tr", "ul"
    ]
)
HIDDEN_TAGS = frozenset(["script", "style", "noscript", "template", "svg", "iframe", "object", "head"])


def html(data: bytes) -> Document:
    """Visible text, one line per block element, each line numbered with its element's source line."""
    import lxml.etree
    import lxml.html

    try:
        root = lxml.html.document_fromstring(data)
    except (lxml.etree.ParserError, ValueError) as exc:
        raise ReadError(f"cannot parse HTML ({exc})") from exc
    out = _HtmlText()
    title = root.find(".//title")
    if title is not None and (title.text or "").strip():
        out.block(title.text.strip(), title.sourceline or 1, None)
    body = root.find("body")
    out.walk(body if body is not None else root)
    out.flush()
    return Document("html", out.lines, nest_headings(out.headings, len(out.lines)), out.numbers)


class _HtmlText:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.numbers: list[int] = []
        self.headings: list[tuple[int, int, str]] = []
        self.parts: list[str] = []
        self.line = 1

    def add(self, text: str | None, line: int) -> None:
        if text and text.strip():
            if not self.parts:
                self.line = line
            self.parts.append(" ".join(text.split()))

    def flush(self) -> None:
        if self.parts:
            self.lines.append(" ".join(self.parts))
            self.numbers.append(self.line)
            self.parts = []

    def block(self, text: str, line: int, level: int | None) -> None:
        self.flush()
        if level:
            self.headings.append((len(self.lines), level, text))
        self.lines.append(text)
        self.numbers.append(line)

    def walk(self, element) -> None:  # type: ignore[no-untyped-def]
        tag = element.tag if isinstance(element.tag, str) else ""
        line = element.sourceline or self.line
        if tag in HIDDEN_TAGS or not tag:
            return
        if tag == "pre":
            self.flush()
            for offset, text in enumerate(split_lines(element.text_content())):
                self.lines.append(text)
                self.numbers.append(line + offset)
            return
        if tag in BLOCK_TAGS:
            self.flush()
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            text = " ".join(element.text_content().split())
            if text:
                self.block(text, line, int(tag[1]))
            return
        self.add(element.text, line)
        for child in element:
            self.walk(child)
            self.add(child.tail, child.sourceline or line)
        if tag in BLOCK_TAGS:
            self.flush()


def notebook(data: bytes) -> Document:
    """Cell sources (outputs are results, not text to search); one cell never shares a chunk."""
    import nbformat

    text, _ = decode(data)
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as exc:  # nbformat raises json, validation and version errors
        raise ReadError(f"not a readable Jupyter notebook ({exc})") from exc
    kernel = (nb.metadata.get("kernelspec") or {}).get("language") or \
        (nb.metadata.get("language_info") or {}).get("name", "python")
    lines: list[str] = []
    numbers: list[int] = []
    cells: list[int] = []
    outline: list[Section] = []
    for number, cell in enumerate(nb.cells, start=1):
        source = cell.get("source", "")
        if not source.strip():
            continue
        cell_lines = split_lines(source)
        inner: list[Section] = []
        if cell.cell_type == "markdown":
            inner = markdown_outline(cell_lines)
        elif kernel == "python":  # magics (%time, !pip) make a cell invalid Python: then no outline
            inner = python_outline("\n".join(cell_lines), cell_lines) or []
        start = len(lines)
        outline.append(Section(start, start + len(cell_lines), f"cell {number} ({cell.cell_type})",
                               [s.shifted(start) for s in inner], boundary=True))
        lines += cell_lines
        numbers += range(1, len(cell_lines) + 1)
        cells += [number] * len(cell_lines)
    return Document("ipynb", lines, outline, numbers, cells)
