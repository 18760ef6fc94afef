"""BM25 against a float64 reference of the Lucene formula; identifier-aware tokens; fusion by rank."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from retrieval.bm25 import BM25Index, tokenize
from retrieval.search import reciprocal_rank_fusion

VOCAB = [
    "parse_header", "readFile", "HTTPServer", "alpha", "beta", "gamma", "delta", "epsilon", "zeta",
    "eta", "theta", "iota", "kappa"
]


def reference_scores(docs: list[list[str]], query: list[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    n, avg = len(docs), sum(map(len, docs)) / len(docs)
    df = Counter(t for d in docs for t in set(d))
    out = np.zeros(n)
    for i, d in enumerate(docs):
        tf = Counter(d)
        for t in query:
            if tf[t]:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                out[i] += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(d) / avg))  # Lucene: no (k1 + 1)
    return out


def test_identifiers_split_into_words_and_keep_the_whole() -> None:
    assert tokenize("parseHttpHeader") == ["parsehttpheader", "parse", "http", "header"]
    assert tokenize("read_file(HTTPServer)") == ["read_file", "read", "file", "httpserver", "http", "server"]
    assert tokenize("the and of") == []


@pytest.mark.parametrize(("n", "seed"), [(1, 0), (63, 1), (500, 2)])
def test_scores_match_reference(n: int, seed: int) -> None:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 30))) for _ in range(n)]
    ids = rng.sample(range(10**6), n)
    index = BM25Index.build(ids, texts)
    query = "parse the header of alpha"
    found_ids, found_scores = index.search(query, k=n)
    want = reference_scores([tokenize(t) for t in texts], tokenize(query))
    positive = want > 0
    assert set(found_ids.tolist()) == {i for i, p in zip(ids, positive, strict=True) if p}
    by_id = dict(zip(ids, want, strict=True))
    np.testing.assert_allclose(found_scores, [by_id[i] for i in found_ids.tolist()], rtol=1e-4)
    assert (np.diff(found_scores) <= 1e-6).all()
    allowed = np.array(ids[: max(1, n // 3)])
    masked_ids, _ = index.search(query, k=n, allowed=allowed)
    assert set(masked_ids.tolist()) == set(found_ids.tolist()) & set(allowed.tolist())


def test_save_load_and_empty(tmp_path: Path) -> None:
    index = BM25Index.build([5, 3], ["alpha beta", "gamma"])
    index.save(tmp_path / "bm25")
    index.save(tmp_path / "bm25")  # replacing an existing index
    loaded = BM25Index.load(tmp_path / "bm25")
    assert loaded.ids.tolist() == [3, 5]
    assert loaded.search("gamma", 5)[0].tolist() == [3]
    empty = BM25Index.build([], [])
    assert empty.search("alpha", 3)[0].size == 0
    empty.save(tmp_path / "empty")
    assert len(BM25Index.load(tmp_path / "empty")) == 0


def test_reciprocal_rank_fusion() -> None:
    fused = dict(reciprocal_rank_fusion([[1, 2, 3], [3, 4]], [1.0, 2.0], k=10))
    assert fused[3] == pytest.approx(1 / 13 + 2 / 11)
    assert fused[1] == pytest.approx(1 / 11)
    assert fused[4] == pytest.approx(2 / 12)
    order = [i for i, _ in reciprocal_rank_fusion([[1, 2, 3], [3, 4]], [1.0, 2.0], k=10)]
    assert order == [3, 4, 1, 2]


def test_chunks_without_a_single_word_build_an_index_that_finds_nothing(tmp_path) -> None:  # found by fuzzing
    index = BM25Index.build([3, 7], ["\x01", "!!! ---"])
    assert index.model is None and list(index.ids) == [3, 7]
    assert len(index.search("anything", 5)[0]) == 0
    index.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25")
    assert list(loaded.ids) == [3, 7] and loaded.model is None
