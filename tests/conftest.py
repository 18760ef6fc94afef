"""Session-wide fixtures: the real teacher model (loaded once, its conversion cached on disk) and the
`transformers` reference that loads the same GGUF file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before torch loads OpenMP: idle threads sleep instead of spinning. On this shared 2-core machine spinning
# threads make a 2-thread forward 10x slower whenever other work runs at the same time.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Triton kernels are tested on CPU in Triton's interpreter, which must be chosen before triton is first
# imported (by any test); without a GPU there is nothing else Triton could run on.
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Converted weights survive between runs here (gitignored), so only the first run reads the GGUF.
MODEL_CACHE = REPO_ROOT / ".data" / "cache"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared evaluation data (RILLET_SHARED_DATA, default <repo>/../shared/data)."""
    return Path(os.environ.get("RILLET_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


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
