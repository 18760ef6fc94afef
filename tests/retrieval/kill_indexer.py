"""Index a collection and die by SIGKILL right after the second commit, before the vector file is saved.

Run as `python -m tests.retrieval.kill_indexer URL INDEX_DIR NAME`; the crash test re-runs the index
afterwards and checks that nothing is lost or duplicated.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import retrieval.indexer as indexer
from memory.db import make_engine
from retrieval.embedder import SentenceEmbedder
from retrieval.service import Retrieval

COMMITS_BEFORE_KILL = 2


def main(url: str, index_dir: str, name: str) -> None:
    indexer.BATCH_CHUNKS = 3  # a commit every three chunks
    indexer.SAVE_EVERY_S = 0.0  # save the vector file after every commit but the one that dies
    committed = [0]  # chunk counts after each commit

    def progress(p: indexer.Progress) -> None:
        if p.stage == "index" and p.chunks > committed[-1]:  # a commit just happened
            committed.append(p.chunks)
            if len(committed) > COMMITS_BEFORE_KILL:
                os.kill(os.getpid(), signal.SIGKILL)

    Retrieval(make_engine(url), Path(index_dir), SentenceEmbedder(device="cpu")).index(name, progress=progress)


if __name__ == "__main__":
    main(*sys.argv[1:4])
