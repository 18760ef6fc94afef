"""Property tests of indexing: any file names (arbitrary bytes) and contents, through the real crawler,
parsers, chunker and catalog, on SQLite and PostgreSQL. Every file is accounted for exactly once, nothing
is refused by the database, the indexes hold exactly the catalog's chunks, and a second run changes
nothing. (Vectors come from a hash: what is checked does not depend on what they mean.)"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import select

from memory.db import make_engine
from retrieval.catalog import Chunk
from retrieval.service import Retrieval
from tests.fuzz.strategies import file_contents, file_names
from tests.hash_embedder import HashEmbedder

COUNTER = itertools.count()


@given(files=st.dictionaries(file_names, file_contents, min_size=1, max_size=6),
       nested=st.one_of(st.none(), file_names))
@example(files={b"\xff\xfe.py": b"x = 1\n", b"a\nb.md": b"# t\n", b"ok.py": b"y = 2\n"}, nested=b"\xe9")
@example(files={b"n.txt": b"text\n" * 2000 + b"\x00nul\n"}, nested=None)
def test_any_files_are_indexed_or_reported_and_the_indexes_agree(db_url: str, files: dict[bytes, bytes],
                                                                  nested: bytes | None) -> None:
    engine = make_engine(db_url)
    with tempfile.TemporaryDirectory(prefix="rillet-fuzz-") as tmp:
        root = os.path.join(os.fsencode(tmp), b"tree")
        os.mkdir(root)
        folder = root if nested is None else os.path.join(root, nested)
        if folder != root:
            os.mkdir(folder)
        for name, data in files.items():
            with open(os.path.join(folder, name), "wb") as handle:
                handle.write(data)
        retrieval = Retrieval(engine, Path(tmp) / "indexes", HashEmbedder())
        name = f"fuzz-{next(COUNTER)}"
        retrieval.create_collection(name, [os.fsdecode(root)])
        try:
            report = retrieval.index(name)
            assert report.indexed + report.unchanged + len(report.skipped) + len(report.failed) == report.files_total
            assert not [r for _, r in report.failed if "catalog" in r], report.failed  # the database refused a row
            store = retrieval._prepare_search(name, None, None)[1]
            catalog = store.catalog_ids()
            assert np.array_equal(np.sort(store.vectors().ids()), catalog)
            assert np.array_equal(store.bm25().ids, catalog)
            with retrieval.db() as session:
                assert not any("\x00" in t for t in session.scalars(select(Chunk.text)))
            again = retrieval.index(name)
            assert not again.changed and again.files_total == report.files_total
            assert sorted(again.skipped) == sorted(report.skipped) and again.failed == report.failed
            for hit in retrieval.search(name, "def return class x", k=3):
                assert hit.citation  # every hit can be cited
        finally:
            retrieval.delete_collection(name)
            shutil.rmtree(Path(tmp) / "indexes", ignore_errors=True)
    engine.dispose()
