"""The FAISS index against a float64 brute-force reference: flat and IVF, removal, filters, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.vector_index import VectorIndex


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def reference(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def assert_same(index: VectorIndex, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int,
                allowed: np.ndarray | None = None) -> None:
    scores, found = index.search(queries, k, allowed)
    keep = np.ones(len(ids), bool) if allowed is None else np.isin(ids, allowed)
    want_scores, want_ids = reference(ids[keep], vectors[keep], queries, min(k, int(keep.sum())))
    np.testing.assert_array_equal(found[:, : want_ids.shape[1]], want_ids)
    np.testing.assert_allclose(scores[:, : want_ids.shape[1]], want_scores, atol=1e-5)
    assert (found[:, want_ids.shape[1]:] == -1).all()


@pytest.mark.parametrize(("n", "dim"), [(1, 8), (63, 384), (500, 17)])
def test_flat_search_matches_reference(n: int, dim: int) -> None:
    rng = np.random.default_rng(n)
    ids = rng.choice(10**9, size=n, replace=False).astype(np.int64)
    vectors = unit(rng, n, dim)
    index = VectorIndex(dim)
    index.add(ids, vectors)
    queries = unit(rng, 5, dim)
    assert_same(index, ids, vectors, queries, k=10)
    gone = ids[: n // 2]
    assert index.remove(gone) == len(gone)
    assert_same(index, ids[n // 2:], vectors[n // 2:], queries, k=10)
    assert_same(index, ids[n // 2:], vectors[n // 2:], queries, k=10, allowed=ids[-3:])


def test_ivf_above_threshold_with_full_probe_is_exact() -> None:
    rng = np.random.default_rng(1)
    ids, vectors = np.arange(1000, 1900, dtype=np.int64), unit(rng, 900, 32)
    index = VectorIndex(32, ivf_threshold=300)
    index.add(ids[:200], vectors[:200])
    assert not index.is_ivf
    index.add(ids[200:], vectors[200:])
    assert index.is_ivf
    index._nprobe = index.index.nlist
    queries = unit(rng, 7, 32)
    assert_same(index, ids, vectors, queries, k=12)
    assert_same(index, ids, vectors, queries, k=12, allowed=ids[::50])
    assert index.remove(ids[:100]) == 100
    assert_same(index, ids[100:], vectors[100:], queries, k=12)
    stored_ids, stored = index.vectors()
    order = np.argsort(stored_ids)
    np.testing.assert_array_equal(stored_ids[order], ids[100:])
    np.testing.assert_array_equal(stored[order], vectors[100:])


def test_default_probe_keeps_recall_high() -> None:
    rng = np.random.default_rng(2)
    centers = unit(rng, 40, 48)
    vectors = centers[rng.integers(0, 40, 6000)] + 0.3 * unit(rng, 6000, 48)
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(6000, dtype=np.int64)
    index = VectorIndex(48, ivf_threshold=1000)
    index.add(ids, vectors)
    queries = vectors[rng.integers(0, 6000, 50)] + 0.05 * unit(rng, 50, 48)
    _, found = index.search(queries, 10)
    _, want = reference(ids, vectors, queries, 10)
    recall = np.mean([len(set(f) & set(w)) / 10 for f, w in zip(found, want, strict=True)])
    assert recall > 0.9


def test_save_and_load_round_trip_atomically(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ids, vectors = np.arange(50, dtype=np.int64) * 7, unit(rng, 50, 24)
    index = VectorIndex(24)
    index.add(ids, vectors)
    path = tmp_path / "sub" / "v.faiss"
    index.save(path)
    index.remove(ids[:10])
    index.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["v.faiss"]
    loaded = VectorIndex.load(path)
    assert sorted(loaded.ids()) == sorted(ids[10:])
    assert_same(loaded, ids[10:], vectors[10:], unit(rng, 3, 24), k=5)


def test_wrong_shapes_are_refused() -> None:
    index = VectorIndex(8)
    with pytest.raises(ValueError, match="8 dimensions"):
        index.add(np.arange(3), np.zeros((3, 9), np.float32))
    scores, ids = index.search(np.zeros(8, np.float32), 4)
    assert (ids == -1).all() and scores.shape == (1, 4)
