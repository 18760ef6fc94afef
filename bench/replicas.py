"""Replicas on one PostgreSQL: catch-up after another replica indexes files, and FAISS against pgvector.

Catch-up: replica A indexes N new files (default 1,000, one function each) into a collection of 20,000
files that replica B already has loaded (their vectors synthetic, put in the embedding cache beforehand);
B's next search catches up from the catalog and the embedding cache. Its time is compared with what B
would spend without the incremental path: a cold start (an empty index folder, every vector read from
the cache) and embedding the new chunks afresh (A's embedding time). Vector stores: synthetic unit
vectors clustered like sentence embeddings (as in search_latency), added through each store's own `add`
and searched one query at a time through its own `search` (k = 10), FAISS (each replica's RAM) against
pgvector (HNSW, cosine, in PostgreSQL), recall@10 against exact search. Memory: FAISS's index as it
serializes (what each replica holds; building an IVF index briefly needs twice that), pgvector's table
and HNSW index on disk (a replica holds none of it).

    python -m bench.replicas [--files 1000] [--base-files 20000] [--sizes 10000 100000 1000000]
                             [--pgvector-up-to 10000] [--queries 200]

pgvector's HNSW grows one insert at a time, as the store adds a collection's chunks (about 5 ms a vector
here): past 10k vectors that takes from minutes to hours on a shared 2-core CPU, so by default the larger
sizes are measured for FAISS only.

Needs the PostgreSQL server of the tests (RILLET_TEST_POSTGRES_URL, default 127.0.0.1:5432) for the
catch-up, and the `pgserver` package (a test dependency) for pgvector.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "replicas.md"
REPO = Path(__file__).resolve().parents[1]
DIM = 384
WORDS = ["parse", "render", "compile", "fetch", "upload", "merge", "sort", "index", "cache", "retry", "encode",
         "decode", "hash", "sign", "verify", "compress", "resize", "rotate", "schedule", "notify", "archive"]
NOUNS = ["invoice", "order", "ticket", "image", "table", "report", "token", "session", "payload", "message",
         "archive", "user", "record", "matrix", "graph", "queue", "budget", "schema", "calendar", "playlist"]


class CountingEmbedder:
    """The real embedder, counting the texts it embeds for an index (queries aside)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.embedded = inner, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded += len(texts)
        return self.inner.embed(texts)


def write_files(folder: Path, n: int, rng: np.random.Generator, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        verb, noun, other = rng.choice(WORDS), rng.choice(NOUNS), rng.choice(NOUNS)
        (folder / f"mod_{i:05d}.py").write_text(
            f'def {verb}_{noun}_{i}(items):\n    """{verb.capitalize()} the {noun} items of the {other} '
            f'(case {i})."""\n    return [{verb}(x) for x in items if x.{other}_id == {i}]\n')


def cache_synthetic_vectors(retrieval, folder: Path, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    """Put a random unit vector in the embedding cache for every chunk of the files in `folder`, so that a
    large collection is indexed without hours of embedding (the catch-up reads vectors, never judges them)."""
    from retrieval.embedder import text_hash
    from retrieval.parse import parse

    hashes = [text_hash(c.embed_text) for path in sorted(folder.iterdir())
              for c in retrieval.chunker.chunk(parse(path.read_bytes(), "python"), path.name)]
    vectors = rng.standard_normal((len(hashes), DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    retrieval.cache.put(dict(zip(hashes, vectors, strict=True)))


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def catch_up_rows(n_files: int, base_files: int, url: str) -> list[str]:
    from memory.db import make_engine
    from retrieval.embedder import SentenceEmbedder
    from retrieval.service import Retrieval

    embedder = SentenceEmbedder()
    embedder.embed(["load the model before timing"])
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "project"
        write_files(folder, base_files, rng, start=n_files + 10)
        a = Retrieval(make_engine(url), work / "a", embedder)
        counted = CountingEmbedder(embedder)
        b = Retrieval(make_engine(url), work / "b", counted)  # type: ignore[arg-type]
        cache_synthetic_vectors(a, folder, rng)
        a.create_collection("project", [folder])
        a.index("project")
        write_files(folder, 10, rng)  # 10 files that A's run below changes
        b.search("project", "parse the invoice items")  # B has the collection loaded
        steady_before = timed(lambda: b.search("project", "parse the invoice items"))
        write_files(folder, n_files + 10, rng)  # the 10 rewritten (changed) and n_files new
        report = a.index("project")
        print(f"A indexed {report.indexed} files, {report.chunks_added} chunks, in {report.seconds:.1f} s", flush=True)
        catch_up = timed(lambda: b.search("project", "compress the image items"))
        steady = timed(lambda: b.search("project", "compress the image items"))
        cold = Retrieval(make_engine(url), work / "cold", CountingEmbedder(embedder))  # type: ignore[arg-type]
        cold_s = timed(lambda: cold.search("project", "compress the image items"))
        chunks = b.get_collection("project").chunks
    return [
        f"| B's first search after A indexed {report.indexed:,} files ({report.chunks_added:,} chunks; "
        f"{chunks:,} in all): catch-up | {catch_up:.2f} | 1.0x | {counted.embedded} |",
        f"| baseline: a cold replica's first search (every vector from the cache) | {cold_s:.2f} "
        f"| {cold_s / catch_up:.1f}x | 0 |",
        f"| baseline: embedding the new chunks afresh (A's embedding time) | {report.embed_seconds:.2f} "
        f"| {report.embed_seconds / catch_up:.1f}x | {report.embedded:,} |",
        f"| B's next search (generation unchanged) | {steady:.3f} | {steady / catch_up:.2f}x | 0 |",
        f"| B's search before A's run (generation unchanged) | {steady_before:.3f} | {steady_before / catch_up:.2f}x "
        "| 0 |",
    ]


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = centres[rng.integers(0, len(centres), m)] + 0.08 * rng.standard_normal((m, DIM), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def percentiles(ms: np.ndarray) -> str:
    return f"{np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f}"


def latencies(search: Callable[[np.ndarray], object], queries: np.ndarray) -> np.ndarray:
    times = []
    for q in queries:
        started = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - started)
    return np.array(times) * 1000


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def store_rows(size: int, n_queries: int, pg_url: str | None, rng: np.random.Generator) -> list[str]:
    """FAISS at `size` vectors, and pgvector too when `pg_url` is given."""
    import faiss

    from retrieval.vector_index import VectorIndex

    centres = rng.standard_normal((1000, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = clustered(rng, size, centres)
    queries = clustered(rng, n_queries, centres)
    ids = np.arange(1, size + 1, dtype=np.int64)
    exact = VectorIndex(DIM, ivf_threshold=size + 1)
    exact.add(ids, vectors)
    truth = exact.search(queries, 10)[1]
    del exact

    flat = VectorIndex(DIM)
    build = timed(lambda: [flat.add(ids[s : s + 100_000], vectors[s : s + 100_000]) for s in range(0, size, 100_000)])
    memory = len(faiss.serialize_index(flat.index))
    ms = latencies(lambda q: flat.search(q, 10), queries)
    kind = "IVF" if flat.is_ivf else "flat"
    rows = [f"| {size:,} | FAISS ({kind}, each replica's RAM) | {build:.1f} | {percentiles(ms)} "
            f"| {recall(flat.search(queries, 10)[1], truth):.3f} | {memory / size * 1e6 / 2**30:.2f} GiB in RAM "
            "per replica |"]
    faiss_p50 = float(np.median(ms))
    flat.remove(ids)  # its memory goes back before pgvector's turn
    print(f"{size:,} vectors: FAISS built in {build:.1f} s", flush=True)
    if pg_url is None:
        return rows
    from sqlalchemy import text

    from memory.db import make_engine, make_sessionmaker
    from retrieval.pgvector_index import PgVectorIndex, drop_table, ensure_pgvector

    engine = make_engine(pg_url)
    ensure_pgvector(engine)
    db = make_sessionmaker(engine)
    drop_table(db, size)
    pg = PgVectorIndex(db, size, DIM)  # the collection id only names the table
    build = timed(lambda: [pg.add(ids[s : s + 10_000], vectors[s : s + 10_000]) for s in range(0, size, 10_000)])
    ms = latencies(lambda q: pg.search(q, 10), queries)
    found = pg.search(queries, 10)[1]
    with engine.connect() as conn:
        size_bytes = conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": pg.table.name}).scalar()
    drop_table(db, size)
    engine.dispose()
    print(f"{size:,} vectors: pgvector built in {build:.1f} s", flush=True)
    rows.append(f"| {size:,} | pgvector (HNSW, cosine, in PostgreSQL) | {build:.1f} | {percentiles(ms)} "
                f"| {recall(found, truth):.3f} | 0 in RAM per replica; {size_bytes / size * 1e6 / 2**30:.2f} GiB "
                f"once, in the database (p50 {float(np.median(ms)) / faiss_p50:.1f}x FAISS's) |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--base-files", type=int, default=20_000,
                        help="files B has loaded before A's run (their vectors synthetic, put in the cache)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--pgvector-up-to", type=int, default=10_000, help="largest size measured on pgvector")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from app.database import upgrade

    server = os.environ.get("RILLET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    name = f"rillet_bench_replicas_{os.getpid()}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(server).set(database=name).render_as_string(hide_password=False)
        upgrade(url)
        catch_up = catch_up_rows(args.files, args.base_files, url)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    stores = []
    with tempfile.TemporaryDirectory() as tmp:
        pg_server, pg_url = None, None
        try:
            import pgserver

            pg_server = pgserver.get_server(Path(tmp) / "pg", cleanup_mode="stop")
            pg_url = pg_server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
        except ImportError:
            print("pgserver is not installed (pip install -e '.[test]'): pgvector rows left out")
        try:
            rng = np.random.default_rng(0)
            for size in args.sizes:
                stores += store_rows(size, args.queries, pg_url if size <= args.pgvector_up_to else None, rng)
        finally:
            if pg_server is not None:
                pg_server.cleanup()
    tables = ["| what | seconds | ratio to the catch-up | texts embedded by B |", "| --- | --- | --- | --- |",
              *catch_up, "",
              "| vectors | store | build s | p50 ms | p99 ms | recall@10 | memory per million chunks |",
              "| --- | --- | --- | --- | --- | --- | --- |", *stores]
    table = "\n".join(tables)
    print(table)
    command = " ".join([f"--files {args.files}", f"--base-files {args.base_files}", "--sizes", *map(str, args.sizes),
                        f"--pgvector-up-to {args.pgvector_up_to}", f"--queries {args.queries}"])
    RESULTS.write_text("# Replicas\n\n`python -m bench.replicas " + command + "` on a shared "
        "2-core CPU, PostgreSQL 15 (catch-up) and pgserver's PostgreSQL 16 with pgvector 0.6 (stores).\n\n"
        + " ".join(" ".join(p.split("\n")) for p in __doc__.split("\n\n")[1:2]) + "\n\n" + table + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
