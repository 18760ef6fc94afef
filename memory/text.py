"""Text from outside, at the boundary: the characters Rillet stores, and what happens to the others.

One rule for every way text comes in (the page, the terminal, the API, LangChain, imported files):
control characters other than tab, line feed and carriage return (C0, DEL, C1), and lone surrogates
(half of a character, which JSON can carry) are not text. PostgreSQL cannot store NUL in a text column
at all, a terminal acts on ESC, and none of them means anything to the model. Where they are met:

- a chat message typed or pasted (`clean_message`): they are removed and the user is told so;
- a title, which is one line (`one_line`): removed, and whitespace runs become one space;
- a collection name, which must match exactly what was created (`NOT_IN_NAMES`): refused;
- text a program or a file hands over (imports, LangChain history, the store itself: `check_text`):
  refused, saying which character and where, since silently changing a transcript would be worse;
- a model's answer (`clean_message`): removed before it is read into the state, so the state stays
  equal to a replay of the stored transcript.
"""

from __future__ import annotations

import re

from memory.errors import InvalidTranscriptError

NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
NOT_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # a name is one line: no breaks or tabs either


def codepoint(char: str) -> str:
    return f"U+{ord(char):04X}"


def clean_message(text: str) -> tuple[str, str | None]:
    """`text` without the characters that are not text, and a sentence for the user when any were removed."""
    found = NOT_TEXT.findall(text)
    if not found:
        return text, None
    kinds = ", ".join(sorted({codepoint(c) for c in found})[:5])
    count = f"{len(found)} control character{'s' if len(found) > 1 else ''}"
    return NOT_TEXT.sub("", text), f"{count} ({kinds}) removed from your message; it was sent without them."


def one_line(text: str) -> str:
    """A title or name as one line: characters that are not text removed, whitespace runs as one space."""
    return " ".join(NOT_TEXT.sub("", text).split())


def check_text(text: str, what: str) -> str:
    """`text` as given, or `InvalidTranscriptError` naming the first character that is not text."""
    found = NOT_TEXT.search(text)
    if found is not None:
        raise InvalidTranscriptError(
            f"{what} contains the control character {codepoint(found.group())} at character {found.start() + 1:,}, "
            "which Rillet does not store; remove it and try again.")
    return text
