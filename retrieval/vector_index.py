"""A FAISS inner-product index keyed by int64 ids, exact while small and IVF when large.

Below `ivf_threshold` vectors it is a flat index (exact, and fast enough: ~1 ms a query at 100k).
Above, it is an inverted-file index (IVF) trained on the vectors it holds: queries visit `nprobe` of
`nlist` clusters (sqrt(n) lists, 1/32 of them probed; recall and latency in
bench/results/search_latency.md). IVF keeps ids natively, so `remove` works in both forms (HNSW cannot
remove). It is retrained when it has grown 4x since training, so clusters stay balanced. Files are
written to a temporary name and renamed, so a reader sees the old index or the new one, never half.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

IVF_THRESHOLD = 100_000
TRAINING_POINTS_PER_LIST = 64


class VectorIndex:
    def __init__(self, dim: int, *, ivf_threshold: int = IVF_THRESHOLD, nprobe: int | None = None) -> None:
        self.dim, self.ivf_threshold, self._nprobe = dim, ivf_threshold, nprobe
        self.index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.trained_size = 0
        self._gpu: faiss.Index | None = None

    @property
    def is_ivf(self) -> bool:
        return isinstance(self.index, faiss.IndexIVF)

    @property
    def nprobe(self) -> int:
        if self._nprobe is not None:
            return self._nprobe
        return max(8, math.ceil(self.index.nlist / 32)) if self.is_ivf else 0

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected {len(ids)} vectors of {self.dim} dimensions, got {vectors.shape}")
        self.index.add_with_ids(vectors, ids)
        self._gpu = None
        if len(self) > self.ivf_threshold and (not self.is_ivf or len(self) > 4 * self.trained_size):
            self._rebuild_as_ivf()

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0 or len(self) == 0:
            return 0
        removed = int(self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))
        self._gpu = None
        return removed

    def ids(self) -> np.ndarray:
        """Every id in the index (unordered)."""
        if not self.is_ivf:
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        lists = self.index.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                 for i in range(self.index.nlist) if lists.list_size(i)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of everything stored: what a rebuild needs."""
        if not self.is_ivf:
            flat = faiss.downcast_index(self.index.index)
            return self.ids(), faiss.rev_swig_ptr(flat.get_xb(), len(self) * self.dim).reshape(-1, self.dim).copy()
        lists, ids, vectors = self.index.invlists, [], []
        for i in range(self.index.nlist):
            size = lists.list_size(i)
            if size:
                ids.append(faiss.rev_swig_ptr(lists.get_ids(i), size).copy())
                codes = faiss.rev_swig_ptr(lists.get_codes(i), size * self.dim * 4).copy()
                vectors.append(codes.view(np.float32).reshape(size, self.dim))
        if not ids:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(ids).astype(np.int64), np.concatenate(vectors)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (len(queries), k); missing hits have id -1. `allowed`: only these ids."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if len(self) == 0 or k <= 0:
            return (np.full((len(queries), max(k, 0)), -np.inf, dtype=np.float32),
                    np.full((len(queries), max(k, 0)), -1, dtype=np.int64))
        if allowed is None and self._on_gpu() is not None:
            return self._gpu.search(queries, k)  # type: ignore[union-attr]
        selector = None if allowed is None else faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        if self.is_ivf:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)
        else:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        return self.index.search(queries, k, params=params)

    def _on_gpu(self) -> faiss.Index | None:
        """A GPU copy for unfiltered searches, when FAISS was built with GPU support and sees a GPU."""
        if self._gpu is None and getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
            try:
                self._gpu = faiss.index_cpu_to_all_gpus(self.index)
                if self.is_ivf:
                    faiss.GpuParameterSpace().set_index_parameter(self._gpu, "nprobe", self.nprobe)
            except RuntimeError as exc:
                log.warning("Searching on the CPU: this index cannot move to the GPU (%s).", exc)
                self._gpu = None
        return self._gpu

    def _rebuild_as_ivf(self) -> None:
        ids, vectors = self.vectors()
        nlist = max(64, int(math.sqrt(len(ids))))  # ~1,000 vectors a list at 1M: cheap to train
        sample = vectors[np.random.default_rng(0).permutation(len(vectors))[: nlist * TRAINING_POINTS_PER_LIST]]
        log.info("Training an IVF index with %d lists on %d of %d vectors", nlist, len(sample), len(ids))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        index.add_with_ids(vectors, ids)
        self.index, self.trained_size, self._gpu = index, len(ids), None

    def save(self, path: Path) -> None:
        """Write atomically: a temporary file in the same folder, flushed, then renamed over `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        faiss.write_index(self.index, str(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)

    @classmethod
    def load(cls, path: Path, *, ivf_threshold: int = IVF_THRESHOLD, nprobe: int | None = None) -> VectorIndex:
        index = faiss.read_index(str(path))
        loaded = cls(index.d, ivf_threshold=ivf_threshold, nprobe=nprobe)
        loaded.index = index
        loaded.trained_size = len(loaded) if loaded.is_ivf else 0
        return loaded


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
