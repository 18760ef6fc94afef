"""Indexing throughput on the Python standard library, against the canonical LangChain pipeline.

Both pipelines get the same files (a copy of standard-library packages of the running
interpreter, by default `asyncio`, `email`, `json` and `unittest`; every file Rillet's crawler would read) and
the same model (all-MiniLM-L6-v2, loaded before timing). LangChain: read each file,
`RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)`, `HuggingFaceEmbeddings`
(sentence-transformers), `FAISS.from_documents`.
Rillet: `Retrieval.index` into a fresh SQLite catalog with an empty embedding cache (crawl, parse,
chunk, embed, catalog, FAISS and BM25 files). Then Rillet re-indexes with no change, and after one
file is edited. The machine is shared, so CPU seconds of this process are reported beside wall time.

    python -m bench.indexing [--packages json logging concurrent]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from app.database import upgrade
from memory.db import make_engine
from retrieval.catalog import Chunk
from retrieval.crawl import Crawler
from retrieval.embedder import SentenceEmbedder, count_tokens, model_path

RESULTS = Path(__file__).parent / "results" / "indexing.md"
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    name: str
    files: int
    chunks: int
    tokens: int  # tokens the model was given (after its 256-token truncation)
    lost: int  # tokens cut off by that truncation
    wall: float
    cpu: float
    embed: float

    def row(self) -> str:
        return (f"| {self.name} | {self.files} | {self.chunks} | {self.tokens:,} | {self.lost:,} | {self.wall:.1f} "
                f"| {self.cpu:.1f} | {self.files / self.wall:.2f} | {self.chunks / self.wall:.1f} "
                f"| {self.embed / self.wall:.0%} |")


def model_tokens(texts: list[str]) -> tuple[int, int]:
    counts = [n + 2 for n in count_tokens(texts)]
    return sum(min(n, 256) for n in counts), sum(max(0, n - 256) for n in counts)


def langchain_pipeline(files: list[Path], root: Path, embeddings) -> Run:  # type: ignore[no-untyped-def]
    from langchain_community.vectorstores import FAISS
    from langchain_core.documents import Document
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    timed = {"embed": 0.0, "texts": []}
    embed_documents = embeddings.embed_documents

    def timed_embed(texts: list[str]) -> list[list[float]]:
        started = time.perf_counter()
        vectors = embed_documents(texts)
        timed["embed"] += time.perf_counter() - started
        timed["texts"] += texts
        return vectors

    object.__setattr__(embeddings, "embed_documents", timed_embed)
    wall, cpu = time.perf_counter(), time.process_time()
    docs = [Document(page_content=p.read_text(encoding="utf-8", errors="replace"),
                     metadata={"source": str(p.relative_to(root))}) for p in files]
    chunks = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200).split_documents(docs)
    FAISS.from_documents(chunks, embeddings)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tokens, lost = model_tokens([t.replace("\n", " ") for t in timed["texts"]])
    return Run("LangChain (splitter 1000/200, HuggingFaceEmbeddings, FAISS)", len(files), len(chunks), tokens,
               lost, wall, cpu, timed["embed"])


def rillet_index(retrieval, name: str) -> tuple[Run, object]:  # type: ignore[no-untyped-def]
    wall, cpu = time.perf_counter(), time.process_time()
    report = retrieval.index(name)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    with retrieval.db() as session:
        texts = [f"{h}\n{t}" for h, t in session.execute(select(Chunk.header, Chunk.text))] if report.embedded else []
    tokens, lost = model_tokens(texts)
    run = Run("Rillet (Retrieval.index)", report.indexed, report.chunks_added, tokens, lost, wall, cpu,
              report.embed_seconds)
    return run, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packages", nargs="+", default=["asyncio", "email", "json", "unittest"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # As the app does (app/cli.py), before FAISS and PyTorch load OpenMP (idle threads sleep, not spin).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from retrieval.service import Retrieval

    stdlib = Path(os.__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "stdlib"
        for package in args.packages:
            shutil.copytree(stdlib / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
        files = [e.abs_path for e in Crawler([root]) if e.skip is None]

        from langchain_community.embeddings import HuggingFaceEmbeddings

        lc_embeddings = HuggingFaceEmbeddings(model_name=str(model_path()),
                                              encode_kwargs={"normalize_embeddings": True})
        lc_embeddings.embed_documents(["warm up"])
        embedder = SentenceEmbedder()
        embedder.embed(["warm up"])
        url = f"sqlite:///{Path(tmp) / 'catalog.db'}"
        upgrade(url)
        retrieval = Retrieval(make_engine(url), Path(tmp) / "indexes", embedder)
        retrieval.create_collection("stdlib", [root])

        print(f"{len(files)} files, {sum(p.stat().st_size for p in files) / 2**20:.1f} MiB "
              f"({', '.join(args.packages)} of Python {os.sys.version.split()[0]})", flush=True)
        ours, _ = rillet_index(retrieval, "stdlib")
        print(ours.row(), flush=True)
        theirs = langchain_pipeline(files, root, lc_embeddings)
        print(theirs.row(), flush=True)
        again, again_report = rillet_index(retrieval, "stdlib")
        edited = max((p for p in files if p.suffix == ".py"), key=lambda p: p.stat().st_size)
        edited.write_text(edited.read_text() + "\n\ndef added_by_the_benchmark():\n    return 'one new function'\n")
        edit, edit_report = rillet_index(retrieval, "stdlib")

    header = ("| pipeline | files | chunks | tokens embedded | tokens lost to truncation | wall s | CPU s "
              "| files/s | chunks/s | time embedding |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    summary = (
        f"\nEnd to end, Rillet takes {ours.wall / theirs.wall:.2f}x the wall time of the LangChain pipeline "
        f"({theirs.wall / ours.wall:.2f}x as fast) and {ours.cpu / theirs.cpu:.2f}x its CPU time.\n\n"
        "| re-index | wall s | share of the first index | files parsed | texts embedded |\n"
        "| --- | --- | --- | --- | --- |\n"
        f"| no change | {again.wall:.2f} | {again.wall / ours.wall:.1%} | {again_report.indexed} "
        f"| {again_report.embedded} |\n"
        f"| one file edited (a function appended to {edited.relative_to(root)}, the largest) | {edit.wall:.2f} "
        f"| {edit.wall / ours.wall:.1%} | {edit_report.indexed} | {edit_report.embedded} |\n")
    table = "\n".join([header, ours.row(), theirs.row()]) + "\n" + summary
    print(table)
    RESULTS.write_text(
        f"# Indexing throughput: Python standard library ({', '.join(args.packages)})\n\n"
        "`python -m bench.indexing` — same files and model for both; " + __doc__.split("\n\n")[1].replace("\n", " ")
        + "\n\n" + table)
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
