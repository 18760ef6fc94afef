"""Decoding: UTF-8 first, then detection; binary, minified and undecodable files get a reason."""

from __future__ import annotations

import pytest

from retrieval.languages import detect
from retrieval.read import MINIFIED_MIN_CHARS, ReadError, SkipFile, check_not_minified, decode

TEXT = "Recette: café crème brûlée, déjà vu à la française.\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "cp1252"])
def test_text_comes_back_exactly(encoding: str) -> None:
    text, _ = decode(TEXT.encode(encoding))
    assert text == TEXT


def test_nul_bytes_mean_binary() -> None:
    with pytest.raises(SkipFile, match="binary"):
        decode(b"abc\x00def")


def test_undecodable_bytes_raise_with_advice() -> None:
    with pytest.raises(ReadError, match="convert it to UTF-8"):
        decode(bytes(range(1, 256)) * 4)


def test_minified_code_is_skipped_but_prose_is_not() -> None:
    line = "var a=1;" * (MINIFIED_MIN_CHARS // 8 + 1)
    with pytest.raises(SkipFile, match="minified"):
        check_not_minified(line, "javascript")
    check_not_minified(line, "markdown")
    check_not_minified("short = 1\n" * 3000, "python")


def test_language_from_name_and_shebang() -> None:
    from pathlib import PurePath

    assert detect(PurePath("a/b.PY")) == "python"
    assert detect(PurePath("Makefile")) == "make"
    assert detect(PurePath("tool"), b"#!/usr/bin/env python3\nprint(1)\n") == "python"
    assert detect(PurePath("run"), b"#!/bin/bash\n") == "bash"
    assert detect(PurePath("data.unknown")) is None
