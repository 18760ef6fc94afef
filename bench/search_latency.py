"""Query latency p50/p99 of the vector index at 10k and 1M vectors, and of a full hybrid search.

Synthetic unit vectors clustered like sentence embeddings (1,000 centres plus noise, 384 dimensions).
At each size the index Rillet builds (exact below 100k vectors, IVF above) is timed one query at a time,
against exact flat search on the same vectors as the baseline, with recall@10 of the IVF answer. If
the CoSQA benchmark index exists (.data/bench/cosqa), full `Retrieval.search` calls are timed too:
query embedding, FAISS, BM25, fusion and the catalog lookup.

    python -m bench.search_latency [--sizes 10000 1000000] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "search_latency.md"
REPO = Path(__file__).resolve().parents[1]
DIM = 384


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):  # in slices, to bound the temporary arrays
        m = min(100_000, n - start)
        x = centres[rng.integers(0, len(centres), m)] + 0.08 * rng.standard_normal((m, DIM), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latencies(search, queries: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    times = []
    for q in queries:
        started = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - started)
    return np.array(times) * 1000


def percentiles(ms: np.ndarray) -> str:
    return f"{np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f}"


def vector_rows(size: int, n_queries: int, rng: np.random.Generator) -> list[str]:
    centres = rng.standard_normal((1000, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = clustered(rng, size, centres)
    queries = clustered(rng, n_queries, centres)
    ids = np.arange(size, dtype=np.int64)
    from retrieval.vector_index import VectorIndex

    started = time.perf_counter()
    ours = VectorIndex(DIM)
    for start in range(0, size, 100_000):
        ours.add(ids[start : start + 100_000], vectors[start : start + 100_000])
    build = time.perf_counter() - started
    exact = VectorIndex(DIM, ivf_threshold=size + 1)
    exact.add(ids, vectors)
    del vectors
    ours_ms = latencies(lambda q: ours.search(q, 10), queries)
    exact_ms = latencies(lambda q: exact.search(q, 10), queries)
    _, found = ours.search(queries, 10)
    _, truth = exact.search(queries, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    kind = f"IVF, {ours.index.nlist} lists, nprobe {ours.nprobe}" if ours.is_ivf else "exact (flat)"
    print(f"{size:,} vectors: built in {build:.1f} s", flush=True)
    return [f"| {size:,} | Rillet index: {kind} | {percentiles(ours_ms)} | {recall:.3f} "
            f"| {np.median(exact_ms) / np.median(ours_ms):.1f}x |",
            f"| {size:,} | baseline: exact flat search | {percentiles(exact_ms)} | 1.000 | 1.0x |"]


def service_rows(n_queries: int) -> list[str]:
    """Full hybrid searches on the CoSQA benchmark collection, if that benchmark has been run."""
    work = REPO / ".data" / "bench" / "cosqa"
    if not (work / "catalog.db").exists():
        return []
    from app.database import upgrade
    from bench import shared_file
    from memory.db import make_engine
    from retrieval.service import Retrieval

    url = f"sqlite:///{work / 'catalog.db'}"
    upgrade(url)
    retrieval = Retrieval(make_engine(url), work / "indexes")
    info = retrieval.get_collection("cosqa")
    if info.indexed_at is None:  # its first index run has not finished
        return []
    chunks = info.chunks
    dev = json.loads(shared_file("cosqa/cosqa-retrieval-dev-500.json").read_text())
    queries = [q["doc"] for q in dev[:n_queries]]
    retrieval.search("cosqa", queries[0], 10)  # loads the model and both indexes
    rows = []
    for mode in ("hybrid", "vector", "bm25"):
        ms = latencies(lambda q, mode=mode: retrieval.search("cosqa", q, 10, mode=mode), queries)
        what = "query embedding included" if mode != "bm25" else "no embedding needed"
        rows.append(f"| {chunks:,} | Retrieval.search, {mode} ({what}) | {percentiles(ms)} | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # As the app does (app/cli.py), before FAISS and PyTorch load OpenMP: on a busy CPU, threads that
    # spin-wait at each barrier make a single query wait for the scheduler (24 ms instead of 2 here).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    rng = np.random.default_rng(0)
    rows = ["| vectors | search | p50 ms | p99 ms | recall@10 | speed-up over flat (p50) |",
            "| --- | --- | --- | --- | --- | --- |"]
    for size in args.sizes:
        rows += vector_rows(size, args.queries, rng)
    rows += service_rows(min(args.queries, 500))
    table = "\n".join(rows)
    print(table)
    RESULTS.write_text("# Search latency\n\n`python -m bench.search_latency` — one query at a time, k = 10, on a "
                       "shared 2-core CPU. " + " ".join(__doc__.split("\n\n")[1].split("\n")) + "\n\n" + table + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
