"""The teacher's per-conversation state: one growing key/value buffer per layer.

Buffers grow by doubling (never past the model's context), so a short chat does not pay for 8,192
positions up front, and decoding writes into preallocated memory instead of concatenating.
"""

from __future__ import annotations

from typing import Self

import torch

from backbone.config import ModelConfig
from backbone.errors import UserError

MIN_CAPACITY = 256


class ContextOverflowError(UserError, ValueError):
    """Raised before any work when tokens would not fit in the model's context window (the user can start a
    new conversation or shorten the input)."""


class LayerKV:
    """Keys and values of one attention layer, shaped (batch, kv_heads, capacity, head_dim)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int, max_context: int) -> None:
        self.keys, self.values, self.length, self.max_context = keys, values, length, max_context

    @classmethod
    def empty(cls, batch_size: int, num_kv_heads: int, head_dim: int, max_context: int,
              device: torch.device | str, dtype: torch.dtype) -> LayerKV:
        shape = (batch_size, num_kv_heads, min(MIN_CAPACITY, max_context), head_dim)
        # Uninitialised: only positions below `length` are ever read.
        return cls(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype),
                   0, max_context)

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def _grow(self, needed: int) -> None:
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        capacity = min(capacity, self.max_context)
        shape = (*self.keys.shape[:2], capacity, self.keys.shape[3])
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_empty(shape)
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values (batch, kv_heads, T, head_dim); return all of them so far (views)."""
        end = self.length + keys.shape[2]
        if end > self.max_context:
            raise ContextOverflowError(
                f"The conversation would reach {end} tokens, past this model's {self.max_context}-token "
                f"context ({self.max_context - self.length} left). Start a new conversation, shorten the "
                "input, or use the student model, whose memory has no length limit."
            )
        if end > self.capacity:
            self._grow(end)
        self.keys[:, :, self.length : end] = keys
        self.values[:, :, self.length : end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """A `ModelState` (backbone/state.py) for softmax attention; `layers[i]` belongs to layer i."""

    kind = "kv_cache"

    def __init__(self, layers: list[LayerKV], max_context: int, fingerprint: str = "") -> None:
        self.layers, self.max_context, self.fingerprint = layers, max_context, fingerprint

    @classmethod
    def empty(cls, config: ModelConfig, batch_size: int = 1, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, fingerprint: str = "") -> KVCache:
        layers = [LayerKV.empty(batch_size, config.num_kv_heads, config.head_dim, config.max_context, device, dtype)
                  for _ in range(config.num_layers)]
        return cls(layers, config.max_context, fingerprint)

    @property
    def num_tokens(self) -> int:
        """Tokens every layer has taken (layer 0 refuses an overflow before any layer changes)."""
        return self.layers[0].length

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for layer in self.layers for t in (layer.keys, layer.values))

    def clone(self) -> Self:
        layers = [LayerKV(layer.keys.clone(), layer.values.clone(), layer.length, layer.max_context)
                  for layer in self.layers]
        return type(self)(layers, self.max_context, self.fingerprint)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Self:
        for layer in self.layers:
            layer.keys = layer.keys.to(device=device, dtype=dtype)
            layer.values = layer.values.to(device=device, dtype=dtype)
        return self

    def to_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for i, layer in enumerate(self.layers):
            tensors[f"layers.{i}.keys"] = layer.keys[:, :, : layer.length].contiguous().cpu()
            tensors[f"layers.{i}.values"] = layer.values[:, :, : layer.length].contiguous().cpu()
        return tensors

    def metadata(self) -> dict[str, str]:
        first = self.layers[0].keys
        return {
            "kind": self.kind,
            "num_tokens": str(self.num_tokens),
            "num_layers": str(len(self.layers)),
            "batch_size": str(first.shape[0]),
            "num_kv_heads": str(first.shape[1]),
            "head_dim": str(first.shape[3]),
            "max_context": str(self.max_context),
            "dtype": str(first.dtype).removeprefix("torch."),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str], config: ModelConfig,
                     fingerprint: str = "", device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> KVCache:
        """Rebuild a saved cache; ValueError when it was made by another model or is damaged."""
        if metadata.get("kind") != cls.kind:
            raise ValueError(f"This state is a {metadata.get('kind')!r}, not a {cls.kind!r}; it belongs to "
                             "another kind of model.")
        if fingerprint and metadata.get("fingerprint") not in ("", None, fingerprint):
            raise ValueError("This state was made by different model weights; replay the conversation instead.")
        try:
            num_tokens = int(metadata["num_tokens"])
        except (KeyError, ValueError):
            raise ValueError("The state's metadata lacks a valid num_tokens.") from None
        expected = (config.num_kv_heads, num_tokens, config.head_dim)
        layers = []
        for i in range(config.num_layers):
            pair = [tensors.get(f"layers.{i}.{name}") for name in ("keys", "values")]
            if any(t is None or t.dim() != 4 or tuple(t.shape[1:]) != expected for t in pair):
                raise ValueError(f"Saved layer {i} does not match this model (expected keys/values of shape "
                                 f"(batch, {', '.join(map(str, expected))})).")
            layer = LayerKV.empty(pair[0].shape[0], config.num_kv_heads, config.head_dim, config.max_context,
                                  device, dtype)
            layer.append(pair[0].to(device=device, dtype=dtype), pair[1].to(device=device, dtype=dtype))
            layers.append(layer)
        if len(tensors) != 2 * config.num_layers:
            raise ValueError(f"The state holds {len(tensors)} tensors; this model needs {2 * config.num_layers}.")
        return cls(layers, config.max_context, fingerprint)
