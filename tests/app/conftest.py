"""Fixtures of the engine tests: a tiny random model and the real teacher behind an engine, a fixture repo."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.chat.models import ModelRegistry
from app.config import Settings
from app.engine import ChatEngine

FIXTURE_REPO = Path(__file__).resolve().parent / "fixture_repo"


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    from gguf import GGUFReader

    from backbone.gguf import find_gguf, read_metadata
    from backbone.tokenizer import ChatTokenizer

    return ChatTokenizer.from_gguf_metadata(read_metadata(GGUFReader(find_gguf())))


@pytest.fixture(scope="session")
def tiny(tokenizer: Any) -> Any:
    """Random weights, real tokenizer and chat format: for behaviour, not answers. The output head is not
    tied to the embeddings, so even greedy decoding writes varied words (tied, it repeats one token)."""
    import torch

    from backbone.config import ModelConfig
    from backbone.generate import LanguageModel
    from backbone.kv_cache import KVCache
    from backbone.model import Transformer

    config = ModelConfig(vocab_size=tokenizer.vocab_size, dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=16, ffn_dim=128, max_context=4096, tie_embeddings=False)
    torch.manual_seed(0)
    fingerprint = "tiny-untied-0"
    return LanguageModel(Transformer(config).eval(), tokenizer, config, fingerprint, config.max_context,
                         lambda: KVCache.empty(config, fingerprint=fingerprint),
                         lambda tensors, meta: KVCache.from_tensors(tensors, meta, config, fingerprint))


@pytest.fixture(scope="session")
def embedder() -> Any:
    from retrieval.embedder import SentenceEmbedder

    model = SentenceEmbedder(device="cpu")
    model.embed(["load the model once"])
    return model


EngineFactory = Callable[..., ChatEngine]


@pytest.fixture
def make_engine(tmp_path: Path, embedder: Any) -> Iterator[EngineFactory]:
    """Engines over one data folder (a second engine = the app restarted) serving the given model."""
    from app.database import open_database
    from memory.sessions import SessionStore
    from retrieval.service import Retrieval

    made: list[ChatEngine] = []

    def build(model: Any, *, max_active: int = 4, **settings: Any) -> ChatEngine:
        config = Settings(data_dir=tmp_path / "data", model="teacher", allowed_roots=[FIXTURE_REPO.parent],
                          **settings)
        registry = ModelRegistry(config, max_active=max_active)
        registry.adopt("teacher", model)
        database = open_database(config.db_url)
        engine = ChatEngine(config, registry=registry, retrieval=Retrieval(database, config.indexes, embedder),
                            store=SessionStore(database))
        made.append(engine)
        return engine

    yield build
    for engine in made:
        engine.close()
        engine.registry.close()
