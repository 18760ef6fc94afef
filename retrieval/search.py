"""Hybrid search: vector and BM25 rankings fused by reciprocal rank, with path and language filters.

Reciprocal rank fusion scores a chunk by sum(weight / (k + rank)) over the rankings it appears in. It
needs no score calibration between cosine similarities and BM25 scores, and a chunk found by both
ranks above one found by either alone. The constants were chosen on the CoSQA dev split
(`python -m bench.retrieval_quality --tune`), never on its test split.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from retrieval.catalog import Chunk, File
from retrieval.embedding_cache import batched

Mode = Literal["hybrid", "vector", "bm25"]
RRF_K = 5  # small: the top few ranks of each list dominate (best of a 6 x 6 grid on dev: MRR 0.527)
VECTOR_WEIGHT = 2.0  # the embedding ranking is the better one on natural-language questions
BM25_WEIGHT = 1.0
CANDIDATES = 50


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk. `path` is relative to its root (prefixed with the root's name when the
    collection has several); lines are 1-based and inclusive; `page` is the PDF page or notebook cell."""

    path: str
    start_line: int
    end_line: int
    score: float
    text: str
    header: str | None = None
    language: str | None = None
    page: int | None = None
    chunk_id: int = 0
    root: str | None = None  # the folder the file was found in (None for documents added by API)
    relative_path: str | None = None  # the file's path inside `root`
    meta: dict[str, Any] | None = field(default=None, compare=False)  # metadata of API documents

    @property
    def citation(self) -> str:
        """`path:start-end`; `file.pdf#page=3:start-end` and `book.ipynb#cell=4:start-end` when paged."""
        lines = f"{self.start_line}" if self.start_line == self.end_line else f"{self.start_line}-{self.end_line}"
        if self.page is not None:
            unit = "cell" if self.language == "ipynb" else "page"
            return f"{self.path}#{unit}={self.page}:{lines}"
        return f"{self.path}:{lines}"

    @property
    def absolute_path(self) -> Path | None:
        return Path(self.root) / self.relative_path if self.root and self.relative_path else None


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], weights: Sequence[float],
                           k: int = RRF_K) -> list[tuple[int, float]]:
    """(id, fused score), best first; ties keep the order of first appearance."""
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


def display_path(roots: Sequence[str], root: int, path: str) -> str:
    return f"{Path(roots[root]).name}/{path}" if len(roots) > 1 else path


def allowed_ids(session: Session, collection_id: int, roots: Sequence[str], path_glob: str | None,
                language: str | None) -> np.ndarray:
    """Chunk ids of the files that pass the filters. A glob matches the displayed path; `*` crosses
    folders (`*.py`, `src/*`, `docs/**/intro.md` all work)."""
    query = select(File.id, File.root, File.path).where(File.collection_id == collection_id,
                                                        File.status == "indexed")
    if language:
        query = query.where(File.language == language.lower())
    files = [file_id for file_id, root, path in session.execute(query)
             if path_glob is None or fnmatch.fnmatchcase(display_path(roots, root, path), path_glob)]
    ids = [i for b in batched(files) for i in session.scalars(select(Chunk.id).where(Chunk.file_id.in_(b)))]
    return np.array(sorted(ids), dtype=np.int64)


def load_hits(session: Session, scored: Sequence[tuple[int, float]], roots: Sequence[str]) -> list[Hit]:
    """Hits for (chunk id, score) pairs in the same order; ids no longer in the catalog are dropped."""
    if not scored:
        return []
    rows = {row.id: row for row in session.execute(
        select(Chunk.id, Chunk.start_line, Chunk.end_line, Chunk.page, Chunk.header, Chunk.text, Chunk.meta,
               File.root, File.path, File.language).join(File).where(Chunk.id.in_([i for i, _ in scored])))}
    hits = []
    for chunk_id, score in scored:
        row = rows.get(chunk_id)
        if row is None:
            continue
        hits.append(Hit(path=display_path(roots, row.root, row.path) if roots else row.path,
                        start_line=row.start_line, end_line=row.end_line, score=float(score), text=row.text,
                        header=row.header, language=row.language, page=row.page, chunk_id=chunk_id,
                        root=roots[row.root] if roots else None, relative_path=row.path if roots else None,
                        meta=row.meta))
    return hits
