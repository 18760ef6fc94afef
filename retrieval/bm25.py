"""Keyword search with BM25 (`bm25s`), with a tokenizer that understands identifiers.

`parse_http_header`, `parseHttpHeader` and `ParseHTTPHeader` all yield the whole identifier and its
words (parse, http, header), so a question in plain words finds code and an exact name still ranks
first. The index is saved with the chunk ids it was built from; a mismatch with the catalog means
it is stale and gets rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG

WORD = re.compile(r"[^\W_]+(?:_+[^\W_]+)*", re.UNICODE)
PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
STOPWORDS = frozenset(STOPWORDS_EN)


def tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    for match in WORD.finditer(text):
        word = match.group()
        parts = PART.findall(word) if word.isascii() else [p for p in word.split("_") if p]
        lowered = word.lower()
        if len(parts) > 1 and lowered not in STOPWORDS:
            tokens.append(lowered)
        tokens.extend(p for p in (part.lower() for part in parts) if p not in STOPWORDS and len(p) > 1)
    return tokens


class BM25Index:
    """BM25 over texts whose chunk ids are `ids` (ascending)."""

    def __init__(self, ids: np.ndarray, model: bm25s.BM25 | None) -> None:
        self.ids, self.model = np.asarray(ids, dtype=np.int64), model

    @classmethod
    def build(cls, ids: Sequence[int], texts: Sequence[str]) -> BM25Index:
        order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
        ids = np.asarray(ids, dtype=np.int64)[order]
        corpus = [tokenize(texts[i]) for i in order]
        if not any(corpus):  # no chunk has a word (or there is none): nothing to score, and bm25s cannot index it
            return cls(ids, None)
        model = bm25s.BM25()
        model.index(corpus, show_progress=False)
        return cls(ids, model)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) best first, only documents that share a word with the query."""
        tokens = tokenize(query)
        if self.model is None or not tokens or k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        mask = None if allowed is None else np.isin(self.ids, allowed).astype(np.float32)
        scores = self.model.get_scores(tokens, weight_mask=mask)
        k = min(k, int(np.count_nonzero(scores > 0)))
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return self.ids[top], scores[top].astype(np.float32)

    def save(self, folder: Path) -> None:
        """Write into a fresh folder, then swap it in by renames, so readers never see half an index."""
        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        np.save(tmp / "ids.npy", self.ids)
        if self.model is not None:
            self.model.save(str(tmp), show_progress=False)
        (tmp / "complete.json").write_text(json.dumps({"documents": len(self.ids), "model": self.model is not None}))
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> BM25Index:
        folder = Path(folder)
        if not (folder / "complete.json").exists():
            raise FileNotFoundError(f"no complete BM25 index in {folder}")
        ids = np.load(folder / "ids.npy")
        has_model = json.loads((folder / "complete.json").read_text()).get("model", len(ids) > 0)
        model = bm25s.BM25.load(str(folder), show_progress=False) if has_model else None
        return cls(ids, model)
