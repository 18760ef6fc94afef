"""Killing the indexer (SIGKILL) mid-run, then running it again, leaves a consistent catalog and index."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from sqlalchemy import select

from retrieval.catalog import Chunk, Collection, File
from retrieval.chunking import Chunker
from retrieval.embedder import SentenceEmbedder, count_tokens
from retrieval.parse import parse
from retrieval.vector_index import VectorIndex
from tests.retrieval.conftest import open_retrieval
from tests.retrieval.repo import TOPICS, helpers_module

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_killed_run_is_completed_by_the_next_one(sqlite_url: str, tmp_path: Path,
                                                 embedder: SentenceEmbedder) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for topic in TOPICS:  # one small file per function: one chunk each
        (repo / f"{topic[0]}.py").write_text(helpers_module([topic]))
    retrieval = open_retrieval(sqlite_url, tmp_path / "indexes", embedder)
    retrieval.create_collection("repo", [repo])

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    killed = subprocess.run([sys.executable, "-m", "tests.retrieval.kill_indexer", sqlite_url,
                             str(tmp_path / "indexes"), "repo"], cwd=REPO_ROOT, env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]

    with retrieval.db() as session:  # the store as it is, before a search would catch it up
        store = retrieval._store(session.scalar(select(Collection.id).where(Collection.name == "repo")))
        done = session.scalars(select(File.path)).all()
        orphans = session.scalars(select(File.path).where(File.status == "indexed", ~File.chunks.any())).all()
    assert 0 < len(done) < len(TOPICS) and orphans == []  # part of the work committed, whole files only
    on_disk = VectorIndex.load(store.vectors_path).ids()
    assert 0 < len(on_disk) < len(store.catalog_ids())  # the vector file lags behind the catalog

    report = retrieval.index("repo")
    assert report.indexed == len(TOPICS) - len(done)
    assert report.unchanged == len(done)

    with retrieval.db() as session:
        rows = session.execute(select(File.path, Chunk.start_line, Chunk.end_line, Chunk.text).join(Chunk)).all()
    chunker = Chunker(count_tokens)
    expected = sorted((f"{name}.py", c.start_line, c.end_line, c.text) for name, _, _ in TOPICS
                      for c in chunker.chunk(parse((repo / f"{name}.py").read_bytes(), "python"), f"{name}.py"))
    assert sorted(tuple(r) for r in rows) == expected  # nothing lost, nothing twice
    assert np.array_equal(np.sort(store.vectors().ids()), store.catalog_ids())
    assert np.array_equal(np.sort(VectorIndex.load(store.vectors_path).ids()), store.catalog_ids())
    assert retrieval.search("repo", "transpose a matrix", k=1)[0].path == "matrix_transpose.py"
