"""A stand-in embedding model: deterministic vectors from a hash of the text."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from retrieval.embedder import count_tokens


class HashEmbedder:
    """Vectors from a hash of the text, for tests whose checks (ids, files, rows) do not depend on what vectors
    mean: the crash trials (a child starts in a second instead of loading the model) and the property tests.
    Chunks are still cut by the real model's token counts."""

    name = "test-hash"
    dim = 64
    max_tokens = 256
    cacheable = True

    def embed(self, texts: Any) -> Any:
        out = np.stack([np.frombuffer(hashlib.shake_256(t.encode("utf-8", "surrogatepass")).digest(4 * self.dim),
                                      dtype=np.uint32).astype(np.float32) - 2**31 for t in texts]) \
            if len(texts) else np.zeros((0, self.dim), dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True).clip(min=1e-6)

    def embed_query(self, text: str) -> Any:
        return self.embed([text])[0]

    def count_tokens(self, texts: Any) -> list[int]:
        return count_tokens(texts)
