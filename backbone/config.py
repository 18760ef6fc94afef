"""The shape of a Llama-architecture model, read from GGUF metadata so other llama-family files load too."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_dim: int
    max_context: int
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    # Per-frequency divisors of RoPE's inverse frequencies (Llama 3's long-context scaling); None: plain RoPE.
    rope_freq_factors: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.num_heads} query heads cannot share {self.num_kv_heads} key/value heads evenly.")
        if self.head_dim % 2:
            raise ValueError(f"Rotary embeddings need an even head dimension, not {self.head_dim}.")
        if self.rope_freq_factors is not None and len(self.rope_freq_factors) != self.head_dim // 2:
            raise ValueError(f"{len(self.rope_freq_factors)} rotary frequency factors for a head dimension of "
                             f"{self.head_dim}; expected {self.head_dim // 2}.")

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any], tensor_names: set[str] | None = None,
                           rope_freqs: Sequence[float] | None = None) -> ModelConfig:
        """`rope_freqs`: the file's rope_freqs tensor, if any (how llama.cpp stores Llama 3's RoPE scaling)."""
        arch = metadata.get("general.architecture")
        if arch != "llama":
            raise ValueError(f"Only llama-architecture GGUF files are supported; this one says {arch!r}.")

        def key(name: str, default: Any = None) -> Any:
            value = metadata.get(f"llama.{name}", default)
            if value is None:
                raise ValueError(f"The GGUF metadata lacks llama.{name}; the file is incomplete.")
            return value

        dim, num_heads = int(key("embedding_length")), int(key("attention.head_count"))
        vocab = metadata.get("llama.vocab_size") or len(metadata.get("tokenizer.ggml.tokens", ()))
        head_dim = int(metadata.get("llama.attention.key_length") or dim // num_heads)
        return cls(
            vocab_size=int(vocab),
            dim=dim,
            num_layers=int(key("block_count")),
            num_heads=num_heads,
            num_kv_heads=int(key("attention.head_count_kv", num_heads)),
            head_dim=head_dim,
            ffn_dim=int(key("feed_forward_length")),
            max_context=int(key("context_length")),
            rope_theta=float(key("rope.freq_base", 10_000.0)),
            norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            tie_embeddings=tensor_names is None or "output.weight" not in tensor_names,
            rope_freq_factors=None if rope_freqs is None else tuple(float(f) for f in rope_freqs),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values; plain RoPE leaves `rope_freq_factors` out, so a model's identity (its fingerprint)
        is what it was before the field existed."""
        values = dataclasses.asdict(self)
        if values["rope_freq_factors"] is None:
            del values["rope_freq_factors"]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        factors = values.get("rope_freq_factors")
        return cls(**{**values, "rope_freq_factors": None if factors is None else tuple(factors)})
