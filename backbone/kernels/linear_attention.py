"""Triton kernels for causal linear attention: a chunked forward and a fused one-token decode step.

Both follow `backbone.attention.linear.chunked_core` / `linear_attention_step` exactly, so the PyTorch
code is their specification and the tests compare the two. On CUDA they are compiled; on CPU they run in
Triton's interpreter, which is slow and meant for tests (set TRITON_INTERPRET=1 to allow it).

Layout: every tensor is made contiguous; q (B, Hq, T, F), k (B, Hk, T, F), v (B, Hk, T, E), state
(B, Hk, F, E). One program owns one key head and one block of value columns, keeps its state in
registers, and walks the chunks in order, serving the Hq/Hk query heads that share that key head.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from backbone.attention.linear import LinearState, check_qkv, check_state, log_decay_of


def _chunked_forward(
    q_ptr, k_ptr, v_ptr, log_decay_ptr, initial_ptr, out_ptr, final_ptr,
    length, features, width, groups, kv_heads,
    HAS_INITIAL: tl.constexpr, CHUNK: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    column_block, batch_head = tl.program_id(0), tl.program_id(1)
    head = batch_head % kv_heads
    f = tl.arange(0, BLOCK_F)
    e = column_block * BLOCK_E + tl.arange(0, BLOCK_E)
    c = tl.arange(0, CHUNK)
    f_ok, e_ok = f < features, e < width
    state_offsets = (batch_head * features + f[:, None]) * width + e[None, :]
    state_mask = f_ok[:, None] & e_ok[None, :]
    state = tl.zeros((BLOCK_F, BLOCK_E), dtype=tl.float32)
    if HAS_INITIAL:
        state = tl.load(initial_ptr + state_offsets, mask=state_mask, other=0.0).to(tl.float32)
    g = tl.load(log_decay_ptr + head).to(tl.float32)
    lag = (c[:, None] - c[None, :]).to(tl.float32)
    intra = tl.where(c[:, None] >= c[None, :], tl.exp(g * tl.maximum(lag, 0.0)), 0.0)
    query_scale = tl.exp(g * (c + 1).to(tl.float32))
    for start in range(0, length, CHUNK):
        t = start + c
        t_ok = t < length
        chunk_length = tl.minimum(length - start, CHUNK)
        key_rows = batch_head * length + t
        k = tl.load(k_ptr + key_rows[:, None] * features + f[None, :], mask=t_ok[:, None] & f_ok[None, :], other=0.0)
        v = tl.load(v_ptr + key_rows[:, None] * width + e[None, :], mask=t_ok[:, None] & e_ok[None, :], other=0.0)
        k, v = k.to(tl.float32), v.to(tl.float32)
        for member in range(groups):
            query_rows = (batch_head * groups + member) * length + t
            q = tl.load(
                q_ptr + query_rows[:, None] * features + f[None, :], mask=t_ok[:, None] & f_ok[None, :], other=0.0
            ).to(tl.float32)
            scores = tl.dot(q, tl.trans(k), input_precision="ieee") * intra
            out = tl.dot(scores, v, input_precision="ieee")
            out += tl.dot(q * query_scale[:, None], state, input_precision="ieee")
            tl.store(
                out_ptr + query_rows[:, None] * width + e[None, :],
                out.to(out_ptr.dtype.element_ty),
                mask=t_ok[:, None] & e_ok[None, :],
            )
        steps_to_end = tl.maximum(chunk_length - 1 - c, 0).to(tl.float32)
        scaled_k = k * tl.exp(g * steps_to_end)[:, None]
        state = state * tl.exp(g * chunk_length.to(tl.float32)) + tl.dot(tl.trans(scaled_k), v, input_precision="ieee")
    tl.store(final_ptr + state_offsets, state, mask=state_mask)


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


_compiled = {fn: triton.jit(fn) for fn in (_chunked_forward, _recurrent_step)}


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
    out = torch.empty(batch, q_heads, length, width, device=q.device, dtype=q.dtype)
    final = torch.empty(batch, kv_heads, features, width, device=q.device, dtype=torch.float32)
    if log_decay is None:
        log_decay = torch.zeros(kv_heads, device=q.device)
    initial_arg = final if initial is None else initial.contiguous().float()
    block_e = min(64, triton.next_power_of_2(width))
    grid = (triton.cdiv(width, block_e), batch * kv_heads)
    _kernel(_chunked_forward, q.device)[grid](
        q, k, v, log_decay.to(q.device, torch.float32).contiguous(), initial_arg, out, final,
        length, features, width, q_heads // kv_heads, kv_heads,
        HAS_INITIAL=initial is not None, CHUNK=chunk_size,
        BLOCK_F=max(16, triton.next_power_of_2(features)), BLOCK_E=max(16, block_e),
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
