"""Hostile input for the property tests: file names as arbitrary bytes, file contents, text with every
kind of character (controls, rich markup, bidi overrides, lone surrogates), and session import documents."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Pieces that broke something once, or could: NUL and other controls, ESC sequences, markup, bidi, BOM,
# line and paragraph separators, a lone surrogate, backslashes, fences and HTML.
PIECES = ["\x00", "\x1b[31m", "\x07", "\x7f", "\x85", "\x9b", "\n", "\r\n", "\r", "\t", "\x0c", "[/x]", "[bold]",
          "[/]", "[link=file:///etc]", "\\[", "\u202e", "\u202c", "\u200f", "\u2066", "\ufeff", "\u2028", "\ud800",
          "\udcff", "```", "<script>", "&amp;", "é", "日本", "🙂", " ", "a", "def f():", "# Title", "0"]

any_char = st.characters(exclude_categories=())  # every code point, surrogates included
texts = st.one_of(st.text(any_char, max_size=60),
                  st.lists(st.sampled_from(PIECES), max_size=12).map("".join),
                  st.lists(st.one_of(st.sampled_from(PIECES), st.text(any_char, max_size=5)), max_size=8).map("".join))

file_names = st.one_of(
    st.binary(min_size=1, max_size=40),
    texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"\xff\xfe", b"a\nb.py", b"[/x].md", b"caf\xe9.txt", b".gitignore", b"notes.ipynb", b"x.pdf",
                     b"-rf", b" lead.py", b"tab\t.py", b"\x1b[31m.py", "\u202egnp.py".encode()]),
).map(lambda b: b.replace(b"/", b"_").replace(b"\x00", b"_")[:200]).filter(lambda b: b not in (b"", b".", b".."))

python_like = st.lists(st.sampled_from(["def f(x):\n    return x\n", "class A:\n    pass\n", "import os\n",
                                        "# comment [/x]\n", "x = '\\x00'\n", "\x00", "\t\n", "def g(:\n"]),
                       max_size=8).map("".join)
file_contents = st.one_of(
    st.binary(max_size=600),
    texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
    texts.map(lambda t: t.encode("utf-16", "surrogatepass")),
    python_like.map(str.encode),
    st.tuples(python_like, st.binary(max_size=20)).map(lambda p: p[0].encode() * 300 + p[1]),  # NUL past 8 KiB
)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                         texts)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(texts, inner, max_size=4)),
                           max_leaves=12)


@st.composite
def import_documents(draw: Any) -> Any:
    """Mostly exports that are almost right (each field drawn from hostile values), sometimes anything."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "user", "assistant", "system", "robot"]), "text": texts},
        optional={"citations": st.one_of(st.none(), st.lists(st.dictionaries(texts, json_scalars, max_size=3),
                                                             max_size=3), json_values),
                  "created_at": st.one_of(st.datetimes().map(str), texts)})
    document = draw(st.fixed_dictionaries(
        {"format": st.sampled_from(["rillet-session", "rillet-session", "other"]),
         "version": st.sampled_from([1, 1, 2, "1"]), "title": texts, "messages": st.lists(message, max_size=6)},
        optional={"collection": st.one_of(st.none(), texts), "system_prompt": st.one_of(st.none(), texts),
                  "created_at": st.one_of(st.datetimes().map(str), texts), "extra": json_values}))
    return document
