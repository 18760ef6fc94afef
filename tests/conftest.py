"""Session-wide fixtures: the real teacher model (loaded once, its conversion cached on disk), the
`transformers` reference that loads the same GGUF file, and migrated databases of both kinds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before torch loads OpenMP: idle threads sleep instead of spinning. On a busy 2-core machine spinning
# threads make a 2-thread forward 10x slower whenever other work runs at the same time.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Triton kernels are tested on CPU in Triton's interpreter, which must be chosen before triton is first
# imported (by any test); without a GPU there is nothing else Triton could run on.
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tests never read the large third-party evaluation texts (RILLET_SHARED_DATA: bench/ only), since a
# user's clone has none: point the setting at a folder that does not exist, so a test that needs them fails
# here as it would there. Tests take text from tests/text.py or generate it.
os.environ["RILLET_SHARED_DATA"] = str(REPO_ROOT / ".data" / "tests-read-no-evaluation-texts")
# Converted weights survive between runs here (gitignored), so only the first run reads the GGUF.
MODEL_CACHE = REPO_ROOT / ".data" / "cache"


@pytest.fixture(scope="session")
def model_cache() -> Path:
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    return MODEL_CACHE


@pytest.fixture(scope="session")
def teacher(model_cache: Path) -> Any:
    """SmolLM2-135M-Instruct as a float32 `LanguageModel` on the CPU."""
    from backbone.loader import load_model

    return load_model("teacher", cache_dir=model_cache)


@dataclass
class Reference:
    model: Any
    tokenizer: Any


@pytest.fixture(scope="session")
def hf_reference() -> Reference:
    """`transformers`' own reading of the same GGUF file: the independent reference for logits and tokens."""
    pytest.importorskip("transformers", reason="transformers is the test-only reference (pip install -e '.[test]')")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from backbone.gguf import find_gguf

    hf_logging.disable_progress_bar()
    path = find_gguf()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return Reference(model.eval(), tokenizer)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One throwaway PostgreSQL database for the whole run, migrated once (`db_url` empties it per test)."""
    from app.database import upgrade
    from tests.pg import temporary_database

    with temporary_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a new SQLite file, or the run's PostgreSQL database with every row deleted."""
    from app.database import upgrade
    from memory.db import Base, make_engine

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'rillet.db'}"
        upgrade(url)
        yield url
        return
    url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()
    yield url
