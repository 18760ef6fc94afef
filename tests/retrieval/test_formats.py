"""PDF, DOCX, HTML and notebook readers on real files: text, outline, and the way back to the source."""

from __future__ import annotations

import io

import nbformat
import pytest

from retrieval.chunking import Chunker
from retrieval.embedder import count_tokens
from retrieval.parse import parse
from retrieval.read import ReadError


def make_pdf(pages: list[list[str]]) -> bytes:
    """A valid PDF with one Helvetica text line per entry, written object by object with its xref table."""
    n = len(pages)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [" + b" ".join(f"{3 + i} 0 R".encode() for i in range(n)) +
               f"] /Count {n} >>".encode()]
    font = 3 + 2 * n
    for i in range(n):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {3 + n + i} 0 R "
                       f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode())
    for lines in pages:
        ops = ["BT /F1 12 Tf 72 720 Td 14 TL"] + [f"({line}) Tj T*" for line in lines] + ["ET"]
        stream = "\n".join(ops).encode()
        objects.append(f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    out.write(b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets))
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def test_pdf_lines_keep_their_page() -> None:
    doc = parse(make_pdf([["Alpha first page", "more alpha"], [], ["Gamma third page"]]), "pdf")
    assert [line.strip() for line in doc.lines] == ["Alpha first page", "more alpha", "Gamma third page"]
    assert doc.pages == [1, 1, 3]
    assert doc.line_numbers == [1, 2, 1]
    chunks = Chunker(count_tokens).chunk(doc, "a.pdf")
    assert [(c.page, c.start_line, c.end_line) for c in chunks] == [(1, 1, 2), (3, 1, 1)]
    assert chunks[1].header == "a.pdf > page 3"


def test_pdf_without_text_and_damaged_pdf_say_why() -> None:
    with pytest.raises(ReadError, match="no text layer"):
        parse(make_pdf([[]]), "pdf")
    with pytest.raises(ReadError, match="damaged PDF"):
        parse(b"%PDF-1.4\nthis is not a pdf", "pdf")


def test_docx_paragraphs_tables_and_headings() -> None:
    import docx

    document = docx.Document()
    document.add_heading("Setup", level=1)
    document.add_paragraph("Install the tool.")
    document.add_heading("Details", level=2)
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "key", "value"
    buffer = io.BytesIO()
    document.save(buffer)
    doc = parse(buffer.getvalue(), "docx")
    assert doc.lines == ["Setup", "Install the tool.", "Details", "key | value"]
    assert doc.line_numbers == [1, 2, 3, 4]
    chunks = Chunker(count_tokens).chunk(doc, "a.docx")
    assert len(chunks) == 1 and chunks[0].text == "\n".join(doc.lines)


def test_html_visible_text_with_source_lines() -> None:
    page = ("<html>\n<head><title>Manual</title>\n<style>p {color: red}</style></head>\n<body>\n"
            "<h1>Start</h1>\n<p>First <b>bold</b> words.</p>\n<script>var hidden = 1;</script>\n"
            "<h2>Next</h2>\n<pre>line one\nline two</pre>\n</body></html>\n")
    doc = parse(page.encode(), "html")
    assert doc.lines == ["Manual", "Start", "First bold words.", "Next", "line one", "line two"]
    assert doc.line_numbers == [2, 5, 6, 8, 9, 10]
    assert [(s.name, [c.name for c in s.children]) for s in doc.outline] == [("Start", ["Next"])]


def test_notebook_cells_are_units_with_their_own_lines() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title\nSome words."),
                nbformat.v4.new_code_cell("import math\n\ndef area(r):\n    return math.pi * r * r"),
                nbformat.v4.new_code_cell("%timeit area(2)")]
    doc = parse(nbformat.writes(nb).encode(), "ipynb")
    assert doc.pages == [1, 1, 2, 2, 2, 2, 3]
    assert doc.line_numbers == [1, 2, 1, 2, 3, 4, 1]
    chunks = Chunker(count_tokens).chunk(doc, "n.ipynb")
    assert [(c.page, c.start_line, c.end_line) for c in chunks] == [(1, 1, 2), (2, 1, 4), (3, 1, 1)]
    assert chunks[0].header == "n.ipynb > cell 1 (markdown) > Title"


def test_broken_notebook_says_why() -> None:
    with pytest.raises(ReadError, match="Jupyter notebook"):
        parse(b'{"cells": 3}', "ipynb")
