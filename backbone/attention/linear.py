"""Causal linear attention in three forms that must agree:

    S_t = γ S_{t-1} + φ(k_t) v_tᵀ,   z_t = γ z_{t-1} + φ(k_t),   o_t = φ(q_t)ᵀ S_t / φ(q_t)ᵀ z_t

- `naive_linear_attention`: the quadratic masked form in float64, the reference for tests;
- `chunked_linear_attention`: chunks of 64, matmuls inside a chunk and a state carried between chunks,
  with an initial state in and the final state out (CPU prefill and training, autograd through it);
- `linear_attention_step` / `recurrent_linear_attention`: one token at a time (decoding).

Inputs are already feature-mapped: q (B, Hq, T, F), k (B, Hk, T, F), v (B, Hk, T, Dv), Hq a multiple of
Hk (grouped-query attention: query head h reads key/value head h // (Hq/Hk)). The optional decay γ is
one value in (0, 1] per key head (RetNet-style recency). The normaliser z is tracked whether or not the
output is divided by it, so a state means the same thing in every mode.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

CHUNK_SIZE = 64


class LinearState(NamedTuple):
    """Running sums of one layer: kv (B, Hk, F, Dv) and the normaliser k_sum (B, Hk, F)."""

    kv: torch.Tensor
    k_sum: torch.Tensor


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise a ValueError that names the mismatch when q, k, v cannot be attended together."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise ValueError(f"{name} must be (batch, heads, time, dim); got shape {tuple(x.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]) or not (q.shape[2] == k.shape[2] == v.shape[2]):
        raise ValueError(f"q, k, v must share batch and time; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same number of heads; got {k.shape[1]} and {v.shape[1]}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k feature sizes differ: {q.shape[-1]} vs {k.shape[-1]}")


def log_decay_of(decay: torch.Tensor | None, num_kv_heads: int) -> torch.Tensor | None:
    """Validate a per-key-head decay γ ∈ (0, 1] and return log γ (float32 or wider)."""
    if decay is None:
        return None
    if decay.shape != (num_kv_heads,):
        raise ValueError(f"decay must have one value per key head, shape ({num_kv_heads},); got {tuple(decay.shape)}")
    if bool(((decay <= 0) | (decay > 1)).any()):
        raise ValueError("decay values must lie in (0, 1]")
    return torch.log(decay.to(torch.promote_types(decay.dtype, torch.float32)))


def check_state(state: LinearState, batch: int, heads: int, features: int, value_dim: int) -> None:
    """A state must match the layer it is fed to; a state from another configuration is refused."""
    expected = (batch, heads, features, value_dim)
    if tuple(state.kv.shape) != expected or tuple(state.k_sum.shape) != expected[:3]:
        raise ValueError(
            f"linear state has kv {tuple(state.kv.shape)} and k_sum {tuple(state.k_sum.shape)}, but this "
            f"attention needs kv {expected} and k_sum {expected[:3]}: the state comes from another configuration"
        )


def chunked_core(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    initial: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised chunked causal linear attention: returns (o = φ(q)ᵀS per step, final S).

    q (B, Hq, T, F), k (B, Hk, T, F), v (B, Hk, T, E), initial (B, Hk, F, E) or None. Callers that want
    a normaliser append a column of ones to v, so that S's last column is z.
    """
    batch, q_heads, length, features = q.shape
    kv_heads, width = k.shape[1], v.shape[-1]
    groups = q_heads // kv_heads
    num_chunks = max(1, math.ceil(length / chunk_size))
    pad = num_chunks * chunk_size - length
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    qc = q.reshape(batch, kv_heads, groups, num_chunks, chunk_size, features)
    kc = k.reshape(batch, kv_heads, num_chunks, chunk_size, features)
    vc = v.reshape(batch, kv_heads, num_chunks, chunk_size, width)
    if initial is None:
        initial = q.new_zeros(batch, kv_heads, features, width)
    index = torch.arange(chunk_size, device=q.device)
    scores = qc @ kc.unsqueeze(2).transpose(-1, -2)  # (B, Hk, G, N, C, C)

    if log_decay is None:
        chunk_kv = kc.transpose(-1, -2) @ vc  # (B, Hk, N, F, E)
        inclusive = chunk_kv.cumsum(2) + initial.unsqueeze(2)
        previous = torch.cat([initial.unsqueeze(2), inclusive[:, :, :-1]], dim=2)
        final = inclusive[:, :, -1]
        scores = scores.masked_fill(index[None, :] > index[:, None], 0.0)
        out = scores @ vc.unsqueeze(2) + qc @ previous.unsqueeze(2)
    else:
        g = log_decay.to(q.dtype)
        lengths = torch.full((num_chunks,), chunk_size, device=q.device)
        lengths[-1] = chunk_size - pad
        steps_to_end = (lengths[:, None] - 1 - index[None, :]).clamp_min(0)  # (N, C)
        key_scale = torch.exp(g[:, None, None] * steps_to_end)  # (Hk, N, C)
        query_scale = torch.exp(g[:, None] * (index + 1))  # (Hk, C)
        chunk_scale = torch.exp(g[:, None] * lengths)  # (Hk, N)
        lag = index[:, None] - index[None, :]
        intra = torch.exp(g[:, None, None] * lag.clamp_min(0)) * (lag >= 0)  # (Hk, C, C)
        chunk_kv = (kc * key_scale[None, :, :, :, None]).transpose(-1, -2) @ vc
        state, states = initial, []
        for n in range(num_chunks):
            states.append(state)
            state = chunk_scale[None, :, n, None, None] * state + chunk_kv[:, :, n]
        previous, final = torch.stack(states, dim=2), state
        scores = scores * intra[None, :, None, None]
        scaled_q = qc * query_scale[None, :, None, None, :, None]
        out = scores @ vc.unsqueeze(2) + scaled_q @ previous.unsqueeze(2)
    out = out.reshape(batch, q_heads, num_chunks * chunk_size, width)[:, :, :length]
    return out, final


def chunked_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    decay: torch.Tensor | None = None,
    normalize: bool = True,
    initial_state: LinearState | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, LinearState]:
    """Chunked causal linear attention; returns (output (B, Hq, T, Dv), state after the last token)."""
    check_qkv(q, k, v)
    batch, _, _, features = q.shape
    kv_heads, value_dim = k.shape[1], v.shape[-1]
    log_decay = log_decay_of(decay, kv_heads)
    initial = None
    if initial_state is not None:
        check_state(initial_state, batch, kv_heads, features, value_dim)
        initial = torch.cat([initial_state.kv, initial_state.k_sum.unsqueeze(-1)], dim=-1).to(q.dtype)
    v_aug = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)
    out, final = chunked_core(q, k, v_aug, log_decay, initial, chunk_size)
    numerator, denominator = out[..., :value_dim], out[..., value_dim:]
    output = numerator / denominator if normalize else numerator
    return output, LinearState(final[..., :value_dim], final[..., value_dim])


def naive_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    decay: torch.Tensor | None = None,
    normalize: bool = True,
    initial_state: LinearState | None = None,
) -> tuple[torch.Tensor, LinearState]:
    """Reference: the full (T × T) masked form computed in float64; returns float64 tensors."""
    check_qkv(q, k, v)
    q, k, v = q.double(), k.double(), v.double()
    batch, q_heads, length, features = q.shape
    kv_heads = k.shape[1]
    groups = q_heads // kv_heads
    log_gamma = torch.zeros(kv_heads, dtype=torch.float64) if decay is None else torch.log(decay.double())
    position = torch.arange(length, dtype=torch.float64)
    lag = position[:, None] - position[None, :]
    weights = torch.where(lag >= 0, torch.exp(log_gamma[:, None, None] * lag.clamp_min(0)), 0.0)
    k_q, v_q = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    weights_q = weights.repeat_interleave(groups, 0)
    attention = (q @ k_q.transpose(-1, -2)) * weights_q
    numerator, denominator = attention @ v_q, attention.sum(-1, keepdim=True)
    decay_to_end = torch.exp(log_gamma[:, None] * (length - 1 - position))  # (Hk, T)
    kv = torch.einsum("bhtf,bhtd,ht->bhfd", k, v, decay_to_end)
    k_sum = torch.einsum("bhtf,ht->bhf", k, decay_to_end)
    if initial_state is not None:
        check_state(initial_state, batch, kv_heads, features, v.shape[-1])
        kv0, z0 = initial_state.kv.double(), initial_state.k_sum.double()
        carried = torch.exp(log_gamma[:, None] * (position + 1)).repeat_interleave(groups, 0)[..., None]
        numerator = numerator + carried * (q @ kv0.repeat_interleave(groups, 1))
        denominator = denominator + carried * (q @ z0.repeat_interleave(groups, 1).unsqueeze(-1))
        total = torch.exp(log_gamma * length)[:, None]
        kv, k_sum = kv + total[..., None] * kv0, k_sum + total * z0
    output = numerator / denominator if normalize else numerator
    return output, LinearState(kv, k_sum)


def linear_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: LinearState | None,
    *,
    decay: torch.Tensor | None = None,
    normalize: bool = True,
) -> tuple[torch.Tensor, LinearState]:
    """One decoding step: q (B, Hq, F), k (B, Hk, F), v (B, Hk, Dv) -> (o (B, Hq, Dv), new state)."""
    check_qkv(q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2))
    batch, q_heads, features = q.shape
    kv_heads, value_dim = k.shape[1], v.shape[-1]
    if state is None:
        state = LinearState(q.new_zeros(batch, kv_heads, features, value_dim), q.new_zeros(batch, kv_heads, features))
    check_state(state, batch, kv_heads, features, value_dim)
    kv, k_sum = state.kv, state.k_sum
    if decay is not None:
        gamma = torch.exp(log_decay_of(decay, kv_heads)).to(q.dtype)
        kv, k_sum = gamma[:, None, None] * kv, gamma[:, None] * k_sum
    kv = kv + k.unsqueeze(-1) * v.unsqueeze(-2)
    k_sum = k_sum + k
    grouped_q = q.reshape(batch, kv_heads, q_heads // kv_heads, features)
    output = grouped_q @ kv
    if normalize:
        output = output / (grouped_q @ k_sum.unsqueeze(-1))
    return output.reshape(batch, q_heads, value_dim), LinearState(kv, k_sum)


def recurrent_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    decay: torch.Tensor | None = None,
    normalize: bool = True,
    initial_state: LinearState | None = None,
) -> tuple[torch.Tensor, LinearState]:
    """The step applied token by token: the decoding path, run over a whole sequence."""
    check_qkv(q, k, v)
    state, outputs = initial_state, []
    for t in range(q.shape[2]):
        out, state = linear_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state, decay=decay, normalize=normalize)
        outputs.append(out)
    if state is None:  # an empty sequence leaves the state as it was
        batch, features, value_dim = q.shape[0], q.shape[-1], v.shape[-1]
        state = LinearState(
            q.new_zeros(batch, k.shape[1], features, value_dim), q.new_zeros(batch, k.shape[1], features)
        )
    return torch.stack(outputs, dim=2) if outputs else q.new_zeros(*q.shape[:3], v.shape[-1]), state
