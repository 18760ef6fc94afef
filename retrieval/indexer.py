"""One incremental indexing run of a collection: crawl, then parse, chunk and embed only what changed.

A file whose size and modification time match the catalog is not even opened; one whose bytes hash the
same is only re-stamped. Changed files are parsed and chunked, and their chunks embedded unless the
embedding cache already has the text. Work is committed in batches (catalog first, in one transaction
per batch, then the in-memory vector index), and the vector file is saved now and then and at the end;
a run killed at any point leaves a catalog that the next load or run brings the index back in line with.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from retrieval.catalog import Chunk, File, bump_generation
from retrieval.chunking import Chunker, PlannedChunk
from retrieval.crawl import Crawler, Entry
from retrieval.embedder import text_hash
from retrieval.embedding_cache import batched
from retrieval.parse import parse
from retrieval.read import ReadError, SkipFile, content_hash
from retrieval.search import display_path
from retrieval.store import CollectionStore

log = logging.getLogger(__name__)
# What a database (or its driver, for text it cannot encode) raises for rows it refuses.
CATALOG_ERRORS = (SQLAlchemyError, UnicodeError, ValueError)

BATCH_CHUNKS = 2048  # chunks per commit: a large pool sorts into well-filled embedding batches
SAVE_EVERY_S = 60.0


@dataclass(frozen=True)
class Progress:
    """A snapshot for a progress bar. `eta_s` is None until there is a rate to go by."""

    stage: str  # "crawl", "index", "save", "done"
    files_done: int
    files_total: int
    chunks: int
    embedded: int
    elapsed_s: float
    eta_s: float | None = None


@dataclass
class IndexReport:
    collection: str
    files_total: int = 0
    indexed: int = 0  # parsed and chunked in this run (new or changed)
    unchanged: int = 0
    removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)
    chunks_added: int = 0
    chunks_removed: int = 0
    chunks_total: int = 0
    embedded: int = 0  # texts sent to the model
    reused: int = 0  # vectors found in the embedding cache
    seconds: float = 0.0
    embed_seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.indexed or self.removed or self.chunks_added or self.chunks_removed)

    def skip_reasons(self) -> Counter[str]:
        """Skipped files counted by kind of reason (the part before any parenthesis)."""
        return Counter(reason.split(" (")[0] for _, reason in self.skipped)


@dataclass
class _Outcome:
    entry: Entry
    file_id: int | None
    status: str  # "indexed", "skipped", "failed", "same"
    reason: str | None = None
    digest: str | None = None
    language: str | None = None
    chunks: list[PlannedChunk] = field(default_factory=list)


@dataclass(frozen=True)
class _Known:
    id: int
    size: int
    mtime: float
    digest: str | None
    status: str
    error: str | None


class Indexer:
    def __init__(self, *, name: str, collection_id: int, roots: list[str], ignore: list[str],
                 db: sessionmaker[Session], store: CollectionStore, chunker: Chunker,
                 progress: Callable[[Progress], None] | None = None, max_file_bytes: int | None = None) -> None:
        self.name, self.collection_id, self.roots, self.ignore = name, collection_id, roots, ignore
        self.db, self.store, self.chunker = db, store, chunker
        self.on_progress = progress
        self.crawler_options = {"max_bytes": max_file_bytes} if max_file_bytes else {}
        self.report = IndexReport(name)
        self.started = time.perf_counter()
        self.files_done = 0
        self.bytes_total = self.bytes_done = 0
        self.last_save = time.perf_counter()

    def run(self) -> IndexReport:
        vectors = self.store.vectors()  # loads and repairs after an interrupted run
        entries = list(Crawler(self.roots, self.ignore, **self.crawler_options))
        self.report.files_total = len(entries)
        known = self._known()
        work: list[tuple[Entry, _Known | None]] = []
        unrecorded = 0
        for entry in entries:
            if not entry.recorded:  # no catalog row can hold it: reported on every run
                self.report.skipped.append((self._title(entry), entry.skip or ""))
                unrecorded += 1
                continue
            row = known.pop((entry.root, entry.path), None)
            if row is not None and (row.size, row.mtime) == (entry.size, entry.mtime) and row.status != "failed":
                self.report.unchanged += 1
                if row.status == "skipped":
                    self.report.skipped.append((self._title(entry), row.error or ""))
            else:
                work.append((entry, row))
        self.files_done = self.report.unchanged + unrecorded
        self.bytes_total = sum(e.size for e, _ in work if not e.skip)
        self._progress("crawl")
        self._remove([row.id for row in known.values()])
        batch: list[_Outcome] = []
        for entry, row in work:
            batch.append(self._prepare(entry, row))
            if sum(len(o.chunks) for o in batch) >= BATCH_CHUNKS:
                self._commit(batch)
                batch = []
        self._commit(batch)
        self._progress("save")
        if self.report.changed or vectors is not self.store.vectors():
            self.store.save_vectors()
        if self.report.changed or not self.store.bm25_path.exists():
            self.store.rebuild_bm25()
        self.report.chunks_total = len(self.store.vectors())
        self.report.seconds = time.perf_counter() - self.started
        self._progress("done")
        return self.report

    def _known(self) -> dict[tuple[int, str], _Known]:
        with self.db() as session:
            rows = session.execute(select(File.root, File.path, File.id, File.size, File.mtime, File.content_hash,
                                          File.status, File.error).where(File.collection_id == self.collection_id))
            return {(r[0], r[1]): _Known(*r[2:]) for r in rows}

    def _title(self, entry: Entry) -> str:
        return display_path(self.roots, entry.root, entry.path)

    def _remove(self, file_ids: list[int]) -> None:
        """Files gone from disk leave the catalog and the index."""
        if not file_ids:
            return
        with self.db.begin() as session:
            bump_generation(session, self.collection_id)
            chunk_ids = self.store.drop_chunks(session, file_ids, files=True)
        self.store.change_vectors(chunk_ids)
        self.report.removed += len(file_ids)
        self.report.chunks_removed += len(chunk_ids)

    def _prepare(self, entry: Entry, row: _Known | None) -> _Outcome:
        """Read, parse and chunk one file; every failure becomes a recorded reason, never an exception."""
        file_id = row.id if row is not None else None
        title = self._title(entry)
        if entry.skip:
            return _Outcome(entry, file_id, "skipped", entry.skip, language=entry.language)
        try:
            data = entry.abs_path.read_bytes()
        except OSError as exc:
            return _Outcome(entry, file_id, "failed", f"cannot read: {exc.strerror or exc}", language=entry.language)
        digest = content_hash(data)
        if row is not None and row.digest == digest and row.status == "indexed":
            return _Outcome(entry, file_id, "same", digest=digest, language=entry.language)
        if not data.strip():
            return _Outcome(entry, file_id, "skipped", "empty file", digest=digest, language=entry.language)
        try:
            document = parse(data, entry.language)
            chunks = self.chunker.chunk(document, title)
        except SkipFile as exc:
            return _Outcome(entry, file_id, "skipped", str(exc), digest=digest, language=entry.language)
        except ReadError as exc:
            return _Outcome(entry, file_id, "failed", str(exc), digest=digest, language=entry.language)
        except Exception as exc:  # a parser bug or an odd file must not stop the run: record it
            log.debug("Parsing %s failed", entry.abs_path, exc_info=True)
            return _Outcome(entry, file_id, "failed", f"cannot parse: {type(exc).__name__}: {exc}",
                            digest=digest, language=entry.language)
        return _Outcome(entry, file_id, "indexed", digest=digest, language=document.language, chunks=chunks)

    def _commit(self, batch: list[_Outcome]) -> None:
        """Store a batch; if the database refuses it, store its files one by one, so that a file whose rows
        cannot be stored fails alone (recorded with the reason) and the run goes on."""
        if not batch:
            return
        try:
            self._commit_batch(batch)
        except CATALOG_ERRORS as exc:
            if len(batch) > 1:
                for outcome in batch:
                    self._commit([outcome])
                return
            outcome = batch[0]
            reason = f"cannot be recorded in the catalog: {_short(exc)}"
            log.warning("%s %s", self._title(outcome.entry), reason, exc_info=exc)
            failed = _Outcome(outcome.entry, outcome.file_id, "failed", reason, language=outcome.entry.language)
            try:
                self._commit_batch([failed])
            except CATALOG_ERRORS:  # not even the failure can be stored (e.g. its path): report it only
                self._count(failed)

    def _commit_batch(self, batch: list[_Outcome]) -> None:
        planned = [(o, c) for o in batch for c in o.chunks]
        texts = [c.embed_text for _, c in planned]
        hashes = [text_hash(t) for t in texts]
        vectors = self._vectors(hashes, texts)
        with self.db.begin() as session:
            bump_generation(session, self.collection_id)
            old_ids = self.store.drop_chunks(
                session, [o.file_id for o in batch if o.file_id is not None and o.status != "same"], files=False)
            file_ids = self._write_files(session, batch)
            rows = [{"file_id": file_ids[id(o)], "ordinal": c.ordinal, "start_line": c.start_line,
                     "end_line": c.end_line, "page": c.page, "header": c.header, "text": c.text, "text_hash": h}
                    for (o, c), h in zip(planned, hashes, strict=True)]
            new_ids = [i for b in batched(rows) for i in session.scalars(
                insert(Chunk).returning(Chunk.id, sort_by_parameter_order=True), b)]
        self.store.change_vectors(old_ids, new_ids, vectors)
        for outcome in batch:
            self._count(outcome)
        self.report.chunks_added += len(new_ids)
        self.report.chunks_removed += len(old_ids)
        self._progress("index")
        if time.perf_counter() - self.last_save > SAVE_EVERY_S:
            self.store.save_vectors()
            self.last_save = time.perf_counter()

    def _vectors(self, hashes: list[str], texts: list[str]) -> np.ndarray:
        """`CollectionStore.vectors_for`, counting what was reused and embedded, with progress per slice."""
        fresh = 0

        def embedded(count: int) -> None:
            nonlocal fresh
            fresh += count
            self.report.embedded += count
            self._progress("index")

        started = time.perf_counter()
        vectors = self.store.vectors_for(hashes, texts, embedded)
        self.report.embed_seconds += time.perf_counter() - started
        self.report.reused += len(hashes) - fresh
        return vectors

    def _write_files(self, session: Session, batch: list[_Outcome]) -> dict[int, int]:
        """Insert or update the file rows of a batch; returns {id(outcome): file id}."""
        ids: dict[int, int] = {}
        updates, inserts = [], []
        for o in batch:
            e = o.entry
            values = {"size": e.size, "mtime": e.mtime, "language": o.language, "error": _storable(o.reason),
                      "status": "indexed" if o.status == "same" else o.status}
            if o.digest is not None:
                values["content_hash"] = o.digest
            if o.file_id is not None:
                updates.append({"id": o.file_id, **values})
                ids[id(o)] = o.file_id
            else:
                inserts.append((o, {"collection_id": self.collection_id, "root": e.root, "path": e.path,
                                    "content_hash": o.digest, **values}))
        for row in updates:
            session.execute(update(File).where(File.id == row.pop("id")).values(**row))
        if inserts:
            new = session.scalars(insert(File).returning(File.id, sort_by_parameter_order=True),
                                  [values for _, values in inserts]).all()
            ids.update((id(o), file_id) for (o, _), file_id in zip(inserts, new, strict=True))
        return ids

    def _count(self, outcome: _Outcome) -> None:
        title = self._title(outcome.entry)
        if outcome.status == "indexed":
            self.report.indexed += 1
        elif outcome.status == "same":
            self.report.unchanged += 1
        elif outcome.status == "skipped":
            self.report.skipped.append((title, outcome.reason or ""))
        else:
            self.report.failed.append((title, outcome.reason or ""))
        self.files_done += 1
        if not outcome.entry.skip:
            self.bytes_done += outcome.entry.size

    def _progress(self, stage: str) -> None:
        if self.on_progress is None:
            return
        elapsed = time.perf_counter() - self.started
        eta = None
        if stage == "done":
            eta = 0.0
        elif self.bytes_done and self.bytes_total:
            eta = elapsed * (self.bytes_total - self.bytes_done) / self.bytes_done
        self.on_progress(Progress(stage, self.files_done, self.report.files_total,
                                  self.report.chunks_added, self.report.embedded, elapsed, eta))


def _short(exc: BaseException) -> str:
    """The database's own words, without the statement and parameters SQLAlchemy adds."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return lines[0] if lines else type(original).__name__


def _storable(text: str | None) -> str | None:
    """A reason as the catalog can store it: no NUL, undecodable bytes escaped."""
    if text is None:
        return None
    return text.replace("\x00", "").encode("utf-8", "backslashreplace").decode("utf-8")
