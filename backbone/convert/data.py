"""Training text for the conversion: code, prose and chat-formatted conversations, as token sequences.

Every batch is a pure function of (seed, step), so a resumed run sees exactly the batches it would have
seen without the interruption: the data position is the step counter. Evaluation text
(wikitext2_test.txt) is never read here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

Encode = Callable[[str], list[int]]

SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
USER_TEMPLATES = (
    "Explain what this code does:\n\n```python\n{text}\n```",
    "Summarize the following passage in a few sentences.\n\n{text}",
    "Here is part of a document I am reading:\n\n{text}\n\nWhat is it about?",
    "Can you review this function and suggest improvements?\n\n```python\n{text}\n```",
    "{text}",
    "Continue this text:\n\n{text}",
)
FORBIDDEN = ("wikitext2_test",)


@dataclass(frozen=True)
class Mixture:
    """Share of each source in the sampled sequences."""

    code: float = 0.35
    prose: float = 0.35
    chat: float = 0.25
    verse: float = 0.05


def stdlib_sources(limit_bytes: int = 6_000_000) -> list[Path]:
    """A deterministic slice of the running interpreter's standard library (no tests, no site-packages)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "lib2to3"}
    files = [p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts)]
    files.sort(key=lambda p: hashlib.sha256(str(p.relative_to(root)).encode()).hexdigest())
    chosen, total = [], 0
    for p in files:
        size = p.stat().st_size
        if total + size > limit_bytes:
            continue
        chosen.append(p)
        total += size
    return chosen


def read_prose(shared_data: Path) -> list[str]:
    """Training prose: WikiText-2 validation articles and the essays (haystack text)."""
    wiki = (shared_data / "text" / "wikitext2_valid.txt").read_text(encoding="utf-8")
    essays = json.loads((shared_data / "niah" / "PaulGrahamEssays.json").read_text(encoding="utf-8"))["text"]
    articles = [a.strip() for a in wiki.split("\n = ") if len(a.strip()) > 200]
    return [*articles, essays]


class Corpus:
    """Token streams per source, tokenized once and cached as .npy files keyed by tokenizer and inputs."""

    def __init__(self, streams: dict[str, np.ndarray], texts: dict[str, list[str]]) -> None:
        self.streams = streams
        self.texts = texts

    @classmethod
    def build(cls, encode: Encode, tokenizer_id: str, shared_data: Path, cache_dir: Path) -> Corpus:
        for name in FORBIDDEN:
            if name in str(shared_data):
                raise ValueError(f"{name} is evaluation-only data and must not be used for training")
        code_files = stdlib_sources()
        prose = read_prose(shared_data)
        verse = (shared_data / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
        code = [p.read_text(encoding="utf-8", errors="replace") for p in code_files]
        texts = {"code": code, "prose": prose, "verse": [verse]}
        key = hashlib.sha256(json.dumps([tokenizer_id, [len(t) for t in code], len(prose), len(verse)]).encode())
        cache = cache_dir / f"corpus-{key.hexdigest()[:16]}"
        streams: dict[str, np.ndarray] = {}
        for name, docs in texts.items():
            path = cache / f"{name}.npy"
            if path.exists():
                streams[name] = np.load(path)
                continue
            ids: list[int] = []
            for doc in docs:
                ids.extend(encode(doc))
                ids.extend(encode("\n\n"))
            streams[name] = np.asarray(ids, dtype=np.int32)
            cache.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, streams[name])
            tmp.replace(path)
            log.info("tokenized %s: %d documents, %d tokens", name, len(docs), len(ids))
        return cls(streams, texts)

    def sizes(self) -> dict[str, int]:
        return {k: int(v.size) for k, v in self.streams.items()}


class BatchSampler:
    """Deterministic batches: `batch(step)` depends only on the seed and the step."""

    def __init__(self, corpus: Corpus, encode: Encode, seq_len: int, batch_size: int, seed: int,
                 mixture: Mixture = Mixture()) -> None:
        self.corpus, self.encode = corpus, encode
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.sources = ["code", "prose", "chat", "verse"]
        self.weights = [mixture.code, mixture.prose, mixture.chat, mixture.verse]

    def batch(self, step: int) -> torch.Tensor:
        rows = [self.sequence(random.Random(f"{self.seed}:{step}:{i}")) for i in range(self.batch_size)]
        return torch.tensor(np.stack(rows), dtype=torch.long)

    def sequence(self, rng: random.Random) -> np.ndarray:
        source = rng.choices(self.sources, self.weights)[0]
        if source == "chat":
            return self._chat(rng)
        stream = self.corpus.streams[source]
        start = rng.randrange(0, stream.size - self.seq_len)
        return stream[start:start + self.seq_len]

    def _chat(self, rng: random.Random) -> np.ndarray:
        """A multi-turn ChatML conversation assembled from corpus text, cut to seq_len tokens."""
        ids = self.encode(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n")
        while len(ids) < self.seq_len:
            kind = rng.choice(["code", "prose"])
            template = rng.choice(USER_TEMPLATES)
            ids += self.encode(f"<|im_start|>user\n{template.format(text=self._snippet(rng, kind, 600))}<|im_end|>\n")
            ids += self.encode(f"<|im_start|>assistant\n{self._snippet(rng, 'prose', 900)}<|im_end|>\n")
        return np.asarray(ids[: self.seq_len], dtype=np.int32)

    def _snippet(self, rng: random.Random, kind: str, max_chars: int) -> str:
        docs: Sequence[str] = self.corpus.texts[kind]
        doc = docs[rng.randrange(len(docs))]
        length = rng.randint(max_chars // 4, max_chars)
        start = rng.randrange(0, max(1, len(doc) - length))
        return doc[start:start + length].strip()
