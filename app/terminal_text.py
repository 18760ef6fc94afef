"""What the terminal prints of text that someone else wrote: titles, messages, file names, collection
names, error messages that quote them. Rich would read `[/x]` in them as markup (and fail, or restyle the
line), and a terminal acts on control characters (ESC starts an escape sequence, CR overwrites the line),
so every such string goes through one of these before it is printed:

- `line(value)`: one line (a title, a path, a name): markup escaped, line breaks and other control
  characters shown as `\\n`, `\\x1b`, so a file name with a newline cannot split a `path:line` line;
- `text(value)`: a message body: the same, but line breaks and tabs kept;
- `visible(value)`: control characters only, for text printed with `markup=False`.
"""

from __future__ import annotations

import re

from rich.markup import escape

_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")  # keeps tab and line feed
_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _shown(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(value: object) -> str:
    return _IN_TEXT.sub(_shown, str(value).replace("\r\n", "\n"))


def text(value: object) -> str:
    return escape(visible(value))


def line(value: object) -> str:
    return escape(_IN_LINE.sub(_shown, str(value)))
