"""A small Llama-architecture transformer (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU).

Written so that attention can be swapped layer by layer: `model.layers[i].attention` is any module with
`forward(x, rope, cache, capture) -> Tensor`, and the model's state is a list of per-layer entries
(`state.layers[i]`) that the model hands, unopened, to the attention of layer i. Rotary embeddings are
applied inside attention, so a replacement sees the same post-RoPE queries and keys.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from backbone.config import ModelConfig


class LayeredState(Protocol):
    """What `Transformer.forward` needs from a state: one entry per layer and the tokens consumed so far.

    Each layer's entry is opaque to the model; its attention module appends to it (and refuses, before
    changing anything, tokens that do not fit), so `num_tokens` follows the layers.
    """

    layers: list[Any]

    @property
    def num_tokens(self) -> int: ...


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Rope:
    """Rotary angles for a run of positions; `apply` rotates (batch, heads, T, head_dim) tensors.

    Uses the half-split pairing (dimension i with i + head_dim/2) of the Hugging Face checkpoints; the
    GGUF loader undoes llama.cpp's interleaving permutation of the q/k weights to match it.
    """

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, start: int,
                 table: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.cos, self.sin, self.start = cos, sin, start
        self.table = table  # the whole (positions, head_dim) cos and sin tables these rows were cut from
        self._capped: dict[int, Rope] = {}  # every layer of one forward asks for the same one

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * self.cos + rotated * self.sin

    def capped(self, limit: int) -> Rope:
        """The rotation of the same positions with every position past `limit` held at `limit`."""
        if self.table is None:
            raise ValueError("this Rope was built without its tables; use Transformer.rope")
        if limit not in self._capped:
            positions = torch.arange(self.start, self.start + self.cos.shape[0], device=self.cos.device)
            cos, sin = (t[positions.clamp(max=limit)].to(self.cos.dtype) for t in self.table)
            self._capped[limit] = Rope(cos, sin, self.start, self.table)
        return self._capped[limit]


def rope_tables(head_dim: int, max_context: int, theta: float,
                freq_factors: tuple[float, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (max_context, head_dim), computed in float64 then rounded once; `freq_factors`
    divide the inverse frequencies (Llama 3 scaling, as llama.cpp's rope_freqs)."""
    # Explicit device: the loader builds the model under torch.device("meta"), but these are real values.
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim)
    if freq_factors is not None:
        inv_freq = inv_freq / torch.tensor(freq_factors, dtype=torch.float64, device="cpu")
    angles = torch.outer(torch.arange(max_context, dtype=torch.float64, device="cpu"), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().float(), angles.sin().float()


class SoftmaxAttention(nn.Module):
    """Causal grouped-query softmax attention with an optional KV cache (backbone/kv_cache.py)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.dim, config.num_heads * config.head_dim, bias=False)
        self.k_proj = nn.Linear(config.dim, config.num_kv_heads * config.head_dim, bias=False)
        self.v_proj = nn.Linear(config.dim, config.num_kv_heads * config.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, config.dim, bias=False)
        self.qkv_proj: nn.Module | None = None  # q, k and v as one product (backbone/quantize.py fuses them)

    def project_unrotated(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, H, T, D), keys and values (B, H_kv, T, D) before RoPE."""
        b, t, _ = x.shape
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split([self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim,
                                              self.num_kv_heads * self.head_dim], dim=-1)
            return (q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2),
                    k.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2),
                    v.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2))
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def project(self, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Post-RoPE queries (B, H, T, D) and keys, and values (B, H_kv, T, D)."""
        q, k, v = self.project_unrotated(x)
        return rope.apply(q), rope.apply(k), v

    def forward(self, x: torch.Tensor, rope: Rope, cache: Any = None,
                capture: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.project(x, rope)
        if capture is not None:
            capture.update(q=q, k=k, v=v)
        if cache is None:
            context = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, enable_gqa=True)
        else:
            past = cache.length
            keys, values = cache.append(k, v)
            context = self._attend_cached(q, keys, values, past)
        out = self.o_proj(context.transpose(1, 2).reshape(b, t, -1))
        if capture is not None:
            capture.update(context=context, output=out)
        return out

    def _attend_cached(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, past: int) -> torch.Tensor:
        b, _, t, d = q.shape
        if t == 1:
            # Decoding: fold each key/value head's query group into the "query length" axis, so no
            # key/value copy is needed and no mask (every cached key is in the past).
            grouped = q.view(b, self.num_kv_heads, -1, d)
            return F.scaled_dot_product_attention(grouped, keys, values).view(b, self.num_heads, 1, d)
        if past == 0:
            return F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=True)
        mask = torch.ones(t, past + t, dtype=torch.bool, device=q.device).tril(past)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.down_proj = nn.Linear(config.ffn_dim, config.dim, bias=False)
        self.gate_up_proj: nn.Module | None = None  # gate and up as one product (backbone/quantize.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention: nn.Module = SoftmaxAttention(config)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = FeedForward(config)

    def forward(self, x: torch.Tensor, rope: Rope, cache: Any = None,
                capture: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        normed = self.attention_norm(x)
        if capture is not None:
            capture["input"] = normed
        x = x + self.attention(normed, rope, cache, capture)
        return x + self.mlp(self.mlp_norm(x))


def _embedding(vocab_size: int, dim: int) -> nn.Embedding:
    """An embedding table; built on the meta device (to load weights into), it skips the random init,
    whose meta kernel imports torch._dynamo (4 s of a 5 s load)."""
    if torch.empty(0).device.type == "meta":
        return nn.Embedding(vocab_size, dim, _weight=torch.empty(vocab_size, dim))
    return nn.Embedding(vocab_size, dim)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = _embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(config.head_dim, config.max_context, config.rope_theta, config.rope_freq_factors)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def rope(self, start: int, length: int, dtype: torch.dtype) -> Rope:
        if start + length > self.rope_cos.shape[0]:
            # Only a model without a context limit (the linearized student) gets here; the teacher's
            # KV cache refuses to grow past the trained context first.
            size = max(start + length, 2 * self.rope_cos.shape[0])
            cos, sin = rope_tables(self.config.head_dim, size, self.config.rope_theta,
                                   self.config.rope_freq_factors)
            self.rope_cos, self.rope_sin = cos.to(self.rope_cos.device), sin.to(self.rope_sin.device)
        cos = self.rope_cos[start : start + length].to(dtype)
        sin = self.rope_sin[start : start + length].to(dtype)
        return Rope(cos, sin, start, (self.rope_cos, self.rope_sin))

    def forward(self, ids: torch.Tensor, state: LayeredState | None = None, *, last_only: bool = False,
                capture: list[dict[str, torch.Tensor]] | None = None, hidden_only: bool = False) -> torch.Tensor:
        """Logits (batch, T, vocab) for token ids (batch, T); with `hidden_only`, the normalised final hidden
        states (batch, T, dim) that `lm_head` would turn into logits (distillation applies it in chunks).

        Without a state this is a plain causal forward over the whole sequence (training, perplexity),
        differentiable. With a state, the tokens continue it and the state advances. `last_only` keeps
        just the final position's logits (prefill). `capture`, a list that receives one dict per layer
        with the attention's input, post-RoPE q/k/v, per-head context and output, serves attention
        transfer.
        """
        t = ids.shape[1]
        start = 0 if state is None else state.num_tokens
        x = self.embed(ids)
        rope = self.rope(start, t, x.dtype)
        for i, layer in enumerate(self.layers):
            layer_capture = None
            if capture is not None:
                layer_capture = {}
                capture.append(layer_capture)
            x = layer(x, rope, None if state is None else state.layers[i], layer_capture)
        if last_only:
            x = x[:, -1:]
        x = self.norm(x)
        return x if hidden_only else self.lm_head(x)


def build_transformer(config: ModelConfig, weights: dict[str, torch.Tensor]) -> Transformer:
    """A `Transformer` that uses `weights` in place (no random initialisation, no copy)."""
    with torch.device("meta"):
        model = Transformer(config)
    weights = dict(weights)
    if config.tie_embeddings:
        weights["lm_head.weight"] = weights["embed.weight"]
    model.load_state_dict(weights, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return model.eval()
