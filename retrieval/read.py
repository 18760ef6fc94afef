"""Turn a file's bytes into text, or say precisely why that is not possible or not worth it."""

from __future__ import annotations

import hashlib
import logging

import charset_normalizer

from retrieval.languages import PROSE

log = logging.getLogger(__name__)

# Code whose lines average this many characters over this much text was generated or minified.
MINIFIED_LINE_CHARS = 400
MINIFIED_MIN_CHARS = 20_000
# When charset detection ties, the legacy encoding source files most often use.
PREFERRED_LEGACY = ("cp1252", "latin_1")


class SkipFile(Exception):
    """The file is deliberately not indexed (binary, minified); the message says why."""


class ReadError(Exception):
    """The file could not be read or decoded; the message says why and is shown to the user."""


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def looks_binary(data: bytes) -> bool:
    return b"\x00" in data[:8192]


def decode(data: bytes) -> tuple[str, str]:
    """(text, encoding): UTF-8 (with or without BOM) when valid, else the best detected charset."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as exc:
            raise ReadError(f"invalid UTF-16 text at byte {exc.start}") from exc
    if looks_binary(data):
        raise SkipFile("binary file (contains NUL bytes)")
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None:
        raise ReadError("not valid UTF-8 and no text encoding fits; convert it to UTF-8 to index it")
    ties = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
    chosen = next((m for m in ties if m.encoding in PREFERRED_LEGACY), best)
    return str(chosen), chosen.encoding


def check_not_minified(text: str, language: str | None) -> None:
    if language in PROSE or len(text) < MINIFIED_MIN_CHARS:
        return
    average = len(text) / (text.count("\n") + 1)
    if average > MINIFIED_LINE_CHARS:
        raise SkipFile(f"minified or generated (lines average {average:.0f} characters)")
