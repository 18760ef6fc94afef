"""Triton kernels for causal linear attention: a chunked forward and a fused one-token decode step.

Both follow `backbone.attention.linear.chunked_core` / `linear_attention_step` exactly, so the PyTorch
code is their specification and the tests compare the two. On CUDA they are compiled; on CPU they run in
Triton's interpreter, which is slow and meant for tests (set TRITON_INTERPRET=1 to allow it).

Layout: every tensor is made contiguous; q (B, Hq, T, F), k (B, Hk, T, F), v (B, Hk, T, E), state
(B, Hk, F, E). The chunked forward runs in three launches so that the chunks, not only the heads, fill
the GPU: every chunk's contribution to the state in parallel; a scan that turns them into the state before
each chunk (the one sequential step, additions only); every chunk's outputs in parallel."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from backbone.attention.linear import LinearState, check_qkv, check_state, log_decay_of


def _chunk_contributions(
    k_ptr, v_ptr, log_decay_ptr, states_ptr,
    length, features, width, kv_heads,
    CHUNK: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """U_n = Σ_j γ^(end − 1 − j) k_jᵀ v_j: what chunk n adds to the state, decayed to the chunk's end."""
    chunk, batch_head, column_block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    num_chunks = tl.cdiv(length, CHUNK)
    c = tl.arange(0, CHUNK)
    f = tl.arange(0, BLOCK_F)
    e = column_block * BLOCK_E + tl.arange(0, BLOCK_E)
    t = chunk * CHUNK + c
    t_ok, f_ok, e_ok = t < length, f < features, e < width
    rows = batch_head.to(tl.int64) * length + t
    k = tl.load(k_ptr + rows[:, None] * features + f[None, :], mask=t_ok[:, None] & f_ok[None, :], other=0.0)
    v = tl.load(v_ptr + rows[:, None] * width + e[None, :], mask=t_ok[:, None] & e_ok[None, :], other=0.0)
    g = tl.load(log_decay_ptr + batch_head % kv_heads).to(tl.float32)
    steps_to_end = tl.maximum(tl.minimum(length - chunk * CHUNK, CHUNK) - 1 - c, 0).to(tl.float32)
    scaled_k = k.to(tl.float32) * tl.exp(g * steps_to_end)[:, None]
    contribution = tl.dot(tl.trans(scaled_k), v.to(tl.float32), input_precision="ieee")
    tile = (batch_head.to(tl.int64) * num_chunks + chunk) * features * width + f[:, None] * width + e[None, :]
    tl.store(states_ptr + tile, contribution, mask=f_ok[:, None] & e_ok[None, :])


def _scan_states(
    states_ptr, log_decay_ptr, initial_ptr, final_ptr,
    length, features, width, kv_heads,
    HAS_INITIAL: tl.constexpr, CHUNK: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """In place, each chunk's contribution becomes the state before that chunk: S_n = γ^len_n S_(n−1) + U_n.
    The only sequential part, and only additions over one tile of the state per program."""
    batch_head, row_block, column_block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    num_chunks = tl.cdiv(length, CHUNK)
    f = row_block * BLOCK_F + tl.arange(0, BLOCK_F)
    e = column_block * BLOCK_E + tl.arange(0, BLOCK_E)
    mask = (f < features)[:, None] & (e < width)[None, :]
    tile = f[:, None] * width + e[None, :]
    head_state = batch_head.to(tl.int64) * features * width
    state = tl.zeros((BLOCK_F, BLOCK_E), dtype=tl.float32)
    if HAS_INITIAL:
        state = tl.load(initial_ptr + head_state + tile, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(log_decay_ptr + batch_head % kv_heads).to(tl.float32)
    for chunk in range(0, num_chunks):
        at = states_ptr + (batch_head.to(tl.int64) * num_chunks + chunk) * features * width + tile
        contribution = tl.load(at, mask=mask, other=0.0)
        tl.store(at, state, mask=mask)
        chunk_length = tl.minimum(length - chunk * CHUNK, CHUNK).to(tl.float32)
        state = state * tl.exp(g * chunk_length) + contribution
    tl.store(final_ptr + head_state + tile, state, mask=mask)


def _chunk_outputs(
    q_ptr, k_ptr, v_ptr, log_decay_ptr, states_ptr, out_ptr,
    length, features, width, q_heads, groups,
    CHUNK: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """Chunk n's outputs for one query head: (q kᵀ ⊙ decay mask) v within the chunk, plus q S_(n−1)."""
    chunk, batch_query_head, column_block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    num_chunks = tl.cdiv(length, CHUNK)
    kv_heads = q_heads // groups
    head = (batch_query_head % q_heads) // groups
    batch_head = (batch_query_head // q_heads) * kv_heads + head
    c = tl.arange(0, CHUNK)
    f = tl.arange(0, BLOCK_F)
    e = column_block * BLOCK_E + tl.arange(0, BLOCK_E)
    t = chunk * CHUNK + c
    t_ok, f_ok, e_ok = t < length, f < features, e < width
    key_rows = batch_head.to(tl.int64) * length + t
    query_rows = batch_query_head.to(tl.int64) * length + t
    q = tl.load(q_ptr + query_rows[:, None] * features + f[None, :], mask=t_ok[:, None] & f_ok[None, :], other=0.0)
    k = tl.load(k_ptr + key_rows[:, None] * features + f[None, :], mask=t_ok[:, None] & f_ok[None, :], other=0.0)
    v = tl.load(v_ptr + key_rows[:, None] * width + e[None, :], mask=t_ok[:, None] & e_ok[None, :], other=0.0)
    tile = (batch_head.to(tl.int64) * num_chunks + chunk) * features * width + f[:, None] * width + e[None, :]
    previous = tl.load(states_ptr + tile, mask=f_ok[:, None] & e_ok[None, :], other=0.0)
    q, k, v = q.to(tl.float32), k.to(tl.float32), v.to(tl.float32)
    g = tl.load(log_decay_ptr + head).to(tl.float32)
    lag = (c[:, None] - c[None, :]).to(tl.float32)
    intra = tl.where(c[:, None] >= c[None, :], tl.exp(g * tl.maximum(lag, 0.0)), 0.0)
    scores = tl.dot(q, tl.trans(k), input_precision="ieee") * intra
    out = tl.dot(scores, v, input_precision="ieee")
    out += tl.dot(q * tl.exp(g * (c + 1).to(tl.float32))[:, None], previous, input_precision="ieee")
    tl.store(out_ptr + query_rows[:, None] * width + e[None, :], out.to(out_ptr.dtype.element_ty),
             mask=t_ok[:, None] & e_ok[None, :])  # fmt: skip


def _recurrent_step(
    q_ptr, k_ptr, v_ptr, log_decay_ptr, kv_ptr, k_sum_ptr, out_ptr,
    features, value_dim, groups, kv_heads,
    NORMALIZE: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    batch_head = tl.program_id(0)
    head = batch_head % kv_heads
    f = tl.arange(0, BLOCK_F)
    d = tl.arange(0, BLOCK_V)
    f_ok, d_ok = f < features, d < value_dim
    state_offsets = (batch_head * features + f[:, None]) * value_dim + d[None, :]
    state_mask = f_ok[:, None] & d_ok[None, :]
    gamma = tl.exp(tl.load(log_decay_ptr + head).to(tl.float32))
    k = tl.load(k_ptr + batch_head * features + f, mask=f_ok, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + batch_head * value_dim + d, mask=d_ok, other=0.0).to(tl.float32)
    kv = tl.load(kv_ptr + state_offsets, mask=state_mask, other=0.0).to(tl.float32)
    k_sum = tl.load(k_sum_ptr + batch_head * features + f, mask=f_ok, other=0.0).to(tl.float32)
    kv = gamma * kv + k[:, None] * v[None, :]
    k_sum = gamma * k_sum + k
    tl.store(kv_ptr + state_offsets, kv.to(kv_ptr.dtype.element_ty), mask=state_mask)
    tl.store(k_sum_ptr + batch_head * features + f, k_sum.to(k_sum_ptr.dtype.element_ty), mask=f_ok)
    for member in range(groups):
        query_head = batch_head * groups + member
        q = tl.load(q_ptr + query_head * features + f, mask=f_ok, other=0.0).to(tl.float32)
        out = tl.sum(q[:, None] * kv, axis=0)
        if NORMALIZE:
            out = out / tl.sum(q * k_sum, axis=0)
        tl.store(out_ptr + query_head * value_dim + d, out.to(out_ptr.dtype.element_ty), mask=d_ok)


_compiled = {fn: triton.jit(fn) for fn in (_chunk_contributions, _scan_states, _chunk_outputs, _recurrent_step)}


def _kernel(fn, device: torch.device):
    """The compiled kernel on CUDA; Triton's interpreter on CPU when TRITON_INTERPRET=1."""
    if device.type == "cuda":
        return _compiled[fn]
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"Triton kernels need a CUDA device (tensors are on {device}); set TRITON_INTERPRET=1 to run them "
            "in Triton's (slow) interpreter, or use the PyTorch backend"
        )
    from triton.runtime.interpreter import InterpretedFunction

    return InterpretedFunction(fn)


def _log_decay(decay: torch.Tensor | None, kv_heads: int, device: torch.device) -> torch.Tensor:
    log_decay = log_decay_of(decay, kv_heads)
    return torch.zeros(kv_heads, device=device) if log_decay is None else log_decay.to(device, torch.float32)


def chunked_core_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    initial: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of `chunked_core`: unnormalised outputs (B, Hq, T, E) and the final state (float32)."""
    batch, q_heads, length, features = q.shape
    kv_heads, width = k.shape[1], v.shape[-1]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    num_chunks = triton.cdiv(length, chunk_size)
    out = torch.empty(batch, q_heads, length, width, device=q.device, dtype=q.dtype)
    states = torch.empty(batch, kv_heads, num_chunks, features, width, device=q.device, dtype=torch.float32)
    final = torch.empty(batch, kv_heads, features, width, device=q.device, dtype=torch.float32)
    log_decay = (torch.zeros(kv_heads, device=q.device) if log_decay is None else log_decay).to(q.device, torch.float32)
    log_decay = log_decay.contiguous()
    block_f = max(16, triton.next_power_of_2(features))
    block_e = max(16, min(128, triton.next_power_of_2(width)))  # one column block for 64 values + the ones
    column_blocks = triton.cdiv(width, block_e)
    _kernel(_chunk_contributions, q.device)[(num_chunks, batch * kv_heads, column_blocks)](
        k, v, log_decay, states, length, features, width, kv_heads, CHUNK=chunk_size, BLOCK_F=block_f,
        BLOCK_E=block_e, num_warps=8,
    )  # fmt: skip
    scan_f, scan_e = min(32, block_f), min(64, block_e)
    _kernel(_scan_states, q.device)[(batch * kv_heads, triton.cdiv(features, scan_f), triton.cdiv(width, scan_e))](
        states, log_decay, final if initial is None else initial.contiguous().float(), final, length, features, width,
        kv_heads, HAS_INITIAL=initial is not None, CHUNK=chunk_size, BLOCK_F=scan_f, BLOCK_E=scan_e,
    )  # fmt: skip
    _kernel(_chunk_outputs, q.device)[(num_chunks, batch * q_heads, column_blocks)](
        q, k, v, log_decay, states, out, length, features, width, q_heads, q_heads // kv_heads, CHUNK=chunk_size,
        BLOCK_F=block_f, BLOCK_E=block_e, num_warps=8,
    )  # fmt: skip
    return out, final


def chunked_linear_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    decay: torch.Tensor | None = None,
    normalize: bool = True,
    initial_state: LinearState | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, LinearState]:
    """Forward-only Triton version of `chunked_linear_attention` (prefill; no autograd)."""
    check_qkv(q, k, v)
    batch, _, _, features = q.shape
    kv_heads, value_dim = k.shape[1], v.shape[-1]
    initial = None
    if initial_state is not None:
        check_state(initial_state, batch, kv_heads, features, value_dim)
        initial = torch.cat([initial_state.kv, initial_state.k_sum.unsqueeze(-1)], dim=-1)
    v_aug = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)
    out, final = chunked_core_triton(q, k, v_aug, log_decay_of(decay, kv_heads), initial, chunk_size)
    numerator, denominator = out[..., :value_dim], out[..., value_dim:]
    output = numerator / denominator if normalize else numerator
    final = final.to(q.dtype)
    return output, LinearState(final[..., :value_dim].contiguous(), final[..., value_dim].contiguous())


def linear_attention_step_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: LinearState,
    *,
    decay: torch.Tensor | None = None,
    normalize: bool = True,
) -> tuple[torch.Tensor, LinearState]:
    """Fused decode step; updates `state`'s tensors in place (they must be contiguous) and returns them."""
    check_qkv(q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2))
    batch, q_heads, features = q.shape
    kv_heads, value_dim = k.shape[1], v.shape[-1]
    check_state(state, batch, kv_heads, features, value_dim)
    if not (state.kv.is_contiguous() and state.k_sum.is_contiguous()):
        raise ValueError("the fused step updates the state in place; its tensors must be contiguous")
    out = torch.empty(batch, q_heads, value_dim, device=q.device, dtype=q.dtype)
    _kernel(_recurrent_step, q.device)[(batch * kv_heads,)](
        q.contiguous(), k.contiguous(), v.contiguous(), _log_decay(decay, kv_heads, q.device),
        state.kv, state.k_sum, out, features, value_dim, q_heads // kv_heads, kv_heads,
        NORMALIZE=normalize, BLOCK_F=max(16, triton.next_power_of_2(features)),
        BLOCK_V=max(16, triton.next_power_of_2(value_dim)),
    )  # fmt: skip
    return out, state
