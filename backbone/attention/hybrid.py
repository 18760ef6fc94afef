"""Hybrid attention: exact softmax over attention sinks and a sliding window, linear attention between.

For the query at position t, key j falls in exactly one of two sets:
    exact  E_t = {j ≤ t : j < sinks  or  j > t − window}       weight exp(q·k_j/√d)
    linear L_t = {sinks ≤ j ≤ t − window}                       weight α_h φ(q)·φ(k_j)
and o_t = Σ_j w_j v_j / Σ_j w_j over both sets: one normaliser, with a learned per-head mix α_h = exp(β_h).
Two options serve long conversations: a decay γ ∈ (0, 1] per state head weights a linear key by
γ^(t − j − window) (counted from when it joined the sums), so the linear mass saturates near 1/(1 − γ)
keys instead of growing without bound; and separate sink queries score the sinks, so a caller can hold
the sinks at a relative distance its positional encoding was trained on (see backbone/student.py).
Equivalently a softmax over all j ≤ t in which linear keys score β_h + log φ(q)·φ(k_j); that is how the
max-subtraction stays consistent: the common shift m_t = max(max_E score, β_h + log Σ_L φ(q)·φ(k_j)) is taken
over both parts, so neither exp overflows and the linear sum is scaled by exp(β_h − m_t) like the rest.

Forms (all agree; tests compare them with `naive_hybrid_attention` in float64):
- full sequence / prefill: queries in blocks of `window`; each block attends to its own and the previous
  block of keys plus the sinks, and the linear part is chunked linear attention over the key stream
  shifted by `window` (key j enters the linear sum at step j + window). Nothing of size T × T is built.
- step: one token; the key leaving the window is folded into the linear sums, the new one written to
  the ring buffer. The state (see state.py) never grows.
Key/value heads may have windows of their own (`StateSpec.head_windows`). Heads never mix, so each run of
neighbouring heads sharing a window is computed as a hybrid attention of its own over its slice of the
inputs, parameters and state.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from backbone.attention.dispatch import linear_core, resolve_backend
from backbone.attention.feature_maps import FeatureMap, Hedgehog, make_feature_map
from backbone.attention.linear import CHUNK_SIZE, check_qkv
from backbone.attention.state import LayerState, StateSpec, group_prefix

PREFILL_SEGMENT = 4096  # tokens per piece when a long prompt continues a state


def _grouped(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(B, Hq, ...) -> (B, Hkv, G, ...): query head h belongs to key/value head h // G."""
    return x.reshape(x.shape[0], kv_heads, x.shape[1] // kv_heads, *x.shape[2:])


def combine(
    scores: torch.Tensor, linear_denominator: torch.Tensor, log_weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shared max-shift of exact scores (…, K) and linear mass φ(q)·z (…, 1): returns the exact weights
    p (…, K), the linear factor exp(β − m) (…, 1) and the normaliser Σp + exp(β − m)·φ(q)·z (…, 1)."""
    tiny = torch.finfo(linear_denominator.dtype).tiny
    linear_log_mass = log_weight + torch.log(linear_denominator.clamp_min(tiny))
    shift = torch.maximum(scores.amax(-1, keepdim=True), linear_log_mass).detach()
    exact = torch.exp(scores - shift)
    linear_factor = torch.exp(log_weight - shift)
    return exact, linear_factor, exact.sum(-1, keepdim=True) + linear_factor * linear_denominator


def hybrid_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    feature_map_q: FeatureMap,
    feature_map_k: FeatureMap,
    log_weight: torch.Tensor,
    spec: StateSpec,
    state: LayerState | None = None,
    log_decay: torch.Tensor | None = None,
    sink_q: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
    backend: str = "auto",
    kernel_step: KernelStep | None = None,
) -> torch.Tensor:
    """Hybrid attention of q (B, Hq, T, D) over k, v (B, Hkv, T, D), all after RoPE.

    Without `state` the sequence starts at position 0 (training). With `state` the tokens continue it and
    the state is advanced in place; T == 1 takes the decoding step. `log_decay` (state heads,) is log γ
    of the linear sums (None: no decay); `sink_q`, shaped like q, replaces q in the sink scores only.
    `backend` picks how the linear part is computed (see dispatch.py); `kernel_step`, when given and
    ready, takes one decoding token through the compiled CPU kernel.
    """
    check_qkv(q, k, v)
    if sink_q is not None and sink_q.shape != q.shape:
        raise ValueError(f"sink_q must be shaped like q {tuple(q.shape)}; got {tuple(sink_q.shape)}")
    if log_decay is not None and log_decay.shape != (spec.state_heads,):
        raise ValueError(f"log_decay must have one value per state head ({spec.state_heads},); "
                         f"got {tuple(log_decay.shape)}")
    if q.shape[-1] != spec.head_dim or k.shape[1] != spec.kv_heads:
        raise ValueError(
            f"inputs q {tuple(q.shape)}, k {tuple(k.shape)} do not fit this attention "
            f"(kv_heads={spec.kv_heads}, head_dim={spec.head_dim})"
        )
    if log_weight.shape != (q.shape[1],):
        raise ValueError(
            f"log_weight must have one value per query head ({q.shape[1]},), got {tuple(log_weight.shape)}"
        )
    if state is not None:
        state.check(spec, q.shape[0], q.dtype)
    if kernel_step is not None and kernel_step.ready(q, state):
        return kernel_step(q, k, v, None, sink_q, None, state)
    if spec.head_windows:
        return _by_head_groups(q, k, v, sink_q, feature_map_q, feature_map_k, log_weight, log_decay, spec, state,
                               chunk_size, backend)
    if state is not None:
        if q.shape[2] == 1:
            with _one_thread_on_cpu(q.device):
                return _step(q, k, v, sink_q, feature_map_q, feature_map_k, log_weight, log_decay, spec, state)
        if q.shape[2] > PREFILL_SEGMENT:  # bounded memory: long prompts go in segments, the state carried
            pieces = [x.split(PREFILL_SEGMENT, dim=2) for x in (q, k, v)]
            sink_pieces = [None] * len(pieces[0]) if sink_q is None else sink_q.split(PREFILL_SEGMENT, dim=2)
            return torch.cat(
                [
                    _sequence(*qkv, sq, feature_map_q, feature_map_k, log_weight, log_decay, spec, state,
                              chunk_size, backend)
                    for *qkv, sq in zip(*pieces, sink_pieces, strict=True)
                ],
                dim=2,
            )
    return _sequence(q, k, v, sink_q, feature_map_q, feature_map_k, log_weight, log_decay, spec, state, chunk_size,
                     backend)


def _by_head_groups(q, k, v, sink_q, feature_map_q, feature_map_k, log_weight, log_decay, spec, state, chunk_size,
                    backend):
    queries_per_head, states_per_head = q.shape[1] // spec.kv_heads, spec.state_heads // spec.kv_heads
    outputs, start = [], None if state is None else state.num_tokens
    for first, stop, _ in spec.head_groups():
        queries = slice(first * queries_per_head, stop * queries_per_head)
        states = slice(first * states_per_head, stop * states_per_head)
        prefix, group_state = group_prefix(first, stop), None
        if state is not None:
            group_state = LayerState({name.removeprefix(prefix): t for name, t in state.tensors.items()
                                      if name.startswith(prefix)}, start)
        outputs.append(hybrid_attention(
            q[:, queries], k[:, first:stop], v[:, first:stop],
            feature_map_q=feature_map_q.heads(queries.start, queries.stop),
            feature_map_k=feature_map_k.heads(states.start, states.stop),
            log_weight=log_weight[queries], spec=spec.heads(first, stop), state=group_state,
            log_decay=None if log_decay is None else log_decay[states],
            sink_q=None if sink_q is None else sink_q[:, queries], chunk_size=chunk_size, backend=backend,
        ))
        if group_state is not None:
            state.tensors.update({prefix + name: t for name, t in group_state.tensors.items()})
            state.num_tokens = group_state.num_tokens
    return torch.cat(outputs, dim=1)


def _expand_to_state_heads(x: torch.Tensor, spec: StateSpec) -> torch.Tensor:
    return x.repeat_interleave(spec.state_heads // spec.kv_heads, dim=1) if spec.state_heads != spec.kv_heads else x


def _sequence(q, k, v, sink_q, feature_map_q, feature_map_k, log_weight, log_decay, spec, state, chunk_size, backend):
    batch, q_heads, length, head_dim = q.shape
    kv_heads, sinks, window = spec.kv_heads, spec.sinks, spec.window
    if length == 0:
        return q.new_zeros(q.shape)
    start = 0 if state is None else state.num_tokens
    if state is None:
        past_k = past_v = k.new_zeros(batch, kv_heads, window, head_dim)
        old_sink_k = old_sink_v = k.new_zeros(batch, kv_heads, 0, head_dim)
        initial = None
    else:
        exact_k, exact_v = state.tensors["exact_k"], state.tensors["exact_v"]
        past_k, past_v = (torch.roll(x[:, :, sinks:], -(start % window), dims=2) for x in (exact_k, exact_v))
        old_sinks = min(sinks, start)
        old_sink_k, old_sink_v = exact_k[:, :, :old_sinks], exact_v[:, :, :old_sinks]
        initial = torch.cat([state.tensors["kv"], state.tensors["k_sum"].unsqueeze(-1)], dim=-1)
    # Extended stream: the `window` tokens before `start` (zeros where there were none), then the new ones.
    # Extended index e is position start - window + e.
    ext_k, ext_v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)

    # Exact part: query block b (positions start + b·W + i) sees extended blocks b and b+1 and the sinks.
    # A run shorter than the window is one block of its own length, seeing the whole extended stream
    # (W + T keys), so a long window does not pad a short prompt to W queries.
    block = min(window, length)
    blocks = math.ceil(length / block)
    pad = blocks * block - length
    q_blocks = _grouped(F.pad(q, (0, 0, 0, pad)), kv_heads).reshape(batch, kv_heads, -1, blocks, block, head_dim)
    if blocks == 1:
        window_k, window_v = ext_k[:, :, None], ext_v[:, :, None]  # (B, Hkv, 1, W + T, D)
    else:
        ext_k_blocks = F.pad(ext_k, (0, 0, 0, pad)).reshape(batch, kv_heads, blocks + 1, window, head_dim)
        ext_v_blocks = F.pad(ext_v, (0, 0, 0, pad)).reshape(batch, kv_heads, blocks + 1, window, head_dim)
        window_k = torch.cat([ext_k_blocks[:, :, :-1], ext_k_blocks[:, :, 1:]], dim=3)  # (B, Hkv, N, 2W, D)
        window_v = torch.cat([ext_v_blocks[:, :, :-1], ext_v_blocks[:, :, 1:]], dim=3)
    new_sinks = min(max(sinks - start, 0), length)
    sink_k = torch.cat([old_sink_k, k[:, :, :new_sinks]], dim=2)  # positions 0 .. S'-1
    sink_v = torch.cat([old_sink_v, v[:, :, :new_sinks]], dim=2)

    scale = head_dim**-0.5
    window_scores = torch.einsum("bhgnid,bhnjd->bhgnij", q_blocks, window_k) * scale
    if sink_q is not None:
        q_blocks_for_sinks = _grouped(F.pad(sink_q, (0, 0, 0, pad)), kv_heads).reshape(q_blocks.shape)
    else:
        q_blocks_for_sinks = q_blocks
    sink_scores = torch.einsum("bhgnid,bhsd->bhgnis", q_blocks_for_sinks, sink_k) * scale
    device = q.device
    i = torch.arange(block, device=device)[:, None]
    j = torch.arange(window + block, device=device)[None, :]
    block_start = torch.arange(blocks, device=device)[:, None, None] * block
    key_position = start - window + block_start + j  # (N, 1, W + block)
    window_mask = (j > i) & (j <= i + window) & (key_position >= max(sinks, 0))  # (N, W, 2W)
    query_position = start + block_start + i  # (N, W, 1)
    sink_mask = torch.arange(sink_k.shape[2], device=device) <= query_position  # (N, W, S')
    scores = torch.cat([window_scores, sink_scores], dim=-1)
    scores = scores.masked_fill(~torch.cat([window_mask, sink_mask], dim=-1), float("-inf"))

    # Linear part: key at position p joins the sums at step p + W, so query t reads the shifted stream.
    shifted_position = start - window + torch.arange(length, device=device)
    shifted_k = _expand_to_state_heads(ext_k[:, :, :length], spec)
    shifted_v = _expand_to_state_heads(ext_v[:, :, :length], spec)
    key_features = feature_map_k(shifted_k) * (shifted_position >= sinks)[:, None].to(q.dtype)
    query_features = feature_map_q(q)
    values = torch.cat([shifted_v, shifted_v.new_ones(*shifted_v.shape[:-1], 1)], dim=-1)
    linear, final = linear_core(query_features, key_features, values, log_decay, initial, chunk_size, backend)
    linear = _grouped(F.pad(linear, (0, 0, 0, pad)), kv_heads).reshape(*q_blocks.shape[:-1], head_dim + 1)

    log_w = _grouped(log_weight.to(q.dtype)[None, :, None, None, None], kv_heads)  # (1, Hkv, G, 1, 1, 1)
    exact, linear_factor, normaliser = combine(scores, linear[..., head_dim:], log_w)
    exact_window, exact_sinks = exact.split([window + block, sink_k.shape[2]], dim=-1)
    numerator = (
        torch.einsum("bhgnij,bhnjd->bhgnid", exact_window, window_v)
        + torch.einsum("bhgnis,bhsd->bhgnid", exact_sinks, sink_v)
        + linear_factor * linear[..., :head_dim]
    )
    out = (numerator / normaliser).reshape(batch, q_heads, blocks * block, head_dim)[:, :, :length]

    if state is not None:
        end = start + length
        for name, seen_sinks, ext in (("exact_k", sink_k, ext_k), ("exact_v", sink_v, ext_v)):
            ring = torch.roll(ext[:, :, length:], end % window, dims=2)  # positions end - W .. end - 1 in slots
            sink_slots = F.pad(seen_sinks, (0, 0, 0, sinks - seen_sinks.shape[2]))
            state.tensors[name] = torch.cat([sink_slots, ring], dim=2)
        state.tensors["kv"] = final[..., :head_dim].contiguous()
        state.tensors["k_sum"] = final[..., head_dim].contiguous()
        state.num_tokens = end
    return out


def _step(q, k, v, sink_q, feature_map_q, feature_map_k, log_weight, log_decay, spec, state):
    """One token at position t = state.num_tokens; updates the state in place.

    At decoding speed the per-op overhead, not arithmetic, is the cost, so this is kept to about 25 tensor
    ops: batched matmuls on 3-d views (no broadcasting matmul), the warm-up mask read from a table, the
    linear part folded into the softmax as one more key, multiply-adds fused (addcmul, baddbmm).
    """
    batch, q_heads, _, head_dim = q.shape
    kv_heads, state_heads, sinks, window = spec.kv_heads, spec.state_heads, spec.sinks, spec.window
    tensors, t = state.tensors, state.num_tokens
    exact_k, exact_v, kv, k_sum = tensors["exact_k"], tensors["exact_v"], tensors["kv"], tensors["k_sum"]
    slot = sinks + t % window
    if t - window >= sinks:  # the key leaving the window joins the linear sums
        leaving_k = _expand_to_state_heads(exact_k.narrow(2, slot, 1), spec)
        leaving_v = _expand_to_state_heads(exact_v.narrow(2, slot, 1), spec)
        features = feature_map_k(leaving_k)  # (B, Hs, 1, F)
        if log_decay is not None:  # the sums are empty until the first key joins, so decaying starts here
            decay = torch.exp(log_decay).to(kv.dtype)
            kv.mul_(decay[:, None, None])
            k_sum.mul_(decay[:, None])
        kv.addcmul_(features.mT, leaving_v)
        k_sum.add_(features.squeeze(2))
    exact_k.narrow(2, slot, 1).copy_(k)
    exact_v.narrow(2, slot, 1).copy_(v)
    if t < sinks:
        exact_k.narrow(2, t, 1).copy_(k)
        exact_v.narrow(2, t, 1).copy_(v)

    slots, groups = sinks + window, q_heads // kv_heads
    scores = torch.bmm(q.reshape(batch * kv_heads, groups, head_dim), exact_k.reshape(-1, slots, head_dim).mT)
    scores = scores.view(batch, kv_heads, groups, slots)
    if sink_q is not None and sinks:
        sink_k = exact_k[:, :, :sinks].reshape(-1, sinks, head_dim)
        sink_scores = torch.bmm(sink_q.reshape(batch * kv_heads, groups, head_dim), sink_k.mT)
        scores[..., :sinks] = sink_scores.view(batch, kv_heads, groups, sinks)
    if t < slots - 1:  # warming up: unseen sink slots and ring slots holding sinks are not attended
        scores.masked_fill_(_unattended_slots(sinks, window, q.device)[t], float("-inf"))
    query_features = feature_map_q(q).reshape(batch * state_heads, q_heads // state_heads, -1)  # (B·Hs, Gs, F)
    linear_numerator = torch.bmm(query_features, kv.reshape(batch * state_heads, -1, head_dim))
    linear_mass = torch.bmm(query_features, k_sum.reshape(batch * state_heads, -1, 1))
    linear_mass = linear_mass.clamp_min_(torch.finfo(q.dtype).tiny).view(-1, groups, 1)
    # The linear part enters as one more key: score β + log φ(q)·z and value φ(q)ᵀS / φ(q)·z, so a single
    # softmax takes the shared max-shift and the one normaliser of `combine`.
    log_w = log_weight.to(q.dtype).view(1, kv_heads, groups, 1)
    linear_score = torch.log(linear_mass).view(batch, kv_heads, groups, 1) + log_w
    weights = torch.cat([scores * head_dim**-0.5, linear_score], dim=-1).softmax(-1).view(-1, groups, slots + 1)
    linear_value = linear_numerator.view(-1, groups, head_dim) / linear_mass
    out = torch.baddbmm(weights[..., slots:] * linear_value, weights[..., :slots], exact_v.reshape(-1, slots, head_dim))
    state.num_tokens = t + 1
    return out.view(batch, q_heads, 1, head_dim)


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """The decoding step is a few dozen tiny ops; on CPU each one that PyTorch parallelises wakes the OpenMP
    team, which costs ~45 µs when idle threads sleep (OMP_WAIT_POLICY=PASSIVE), far more than its arithmetic."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.cache
def _unattended_slots(sinks: int, window: int, device: torch.device) -> torch.Tensor:
    """Row t (t < sinks + window − 1, while the state warms up): the exact slots the query at position t
    must not attend, i.e. sink slots not yet written and ring slots empty or holding a sink's position."""
    with torch.inference_mode(False):  # a plain tensor, usable with autograd whichever mode fills the cache
        t = torch.arange(sinks + window - 1)[:, None]
        slot = torch.arange(sinks + window)[None, :]
        ring_position = t - (t - (slot - sinks)) % window
        attended = torch.where(slot < sinks, slot <= t, ring_position >= sinks)
        return (~attended).to(device)


def naive_hybrid_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    query_features: torch.Tensor,
    key_features: torch.Tensor,
    log_weight: torch.Tensor,
    sinks: int,
    window: int | tuple[int, ...],
    *,
    decay: torch.Tensor | None = None,
    sink_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference: the (T × T) masked definition in float64, from position 0; returns float64.

    `key_features` has kv heads or query heads; it is expanded to query heads like k and v, and so is
    `decay` (γ, one per key-feature head). `window` is one for all heads or one per kv head. `sink_q` scores
    keys j < sinks in place of q.
    """
    q, k, v = q.double(), k.double(), v.double()
    query_features, key_features = query_features.double(), key_features.double()
    q_heads, kv_heads, length = q.shape[1], k.shape[1], q.shape[2]
    k, v = k.repeat_interleave(q_heads // kv_heads, 1), v.repeat_interleave(q_heads // kv_heads, 1)
    key_features = key_features.repeat_interleave(q_heads // key_features.shape[1], 1)
    windows = torch.tensor([window] * kv_heads if isinstance(window, int) else window)
    window = windows.repeat_interleave(q_heads // kv_heads)[:, None, None]  # (Hq, 1, 1)
    position = torch.arange(length)
    t, j = position[:, None], position[None, :]
    exact_set = (j <= t) & ((j < sinks) | (j > t - window))
    linear_set = (j <= t) & ~exact_set
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if sink_q is not None:
        scores = torch.where(j < sinks, (sink_q.double() @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), scores)
    shift = scores.masked_fill(~exact_set, float("-inf")).amax(-1, keepdim=True)
    exact = torch.exp(scores - shift) * exact_set
    alpha = torch.exp(log_weight.double())[None, :, None, None]
    linear = alpha * (query_features @ key_features.transpose(-1, -2)) * linear_set * torch.exp(-shift)
    if decay is not None:
        gamma = decay.double().repeat_interleave(q_heads // decay.shape[0])[:, None, None]
        linear = linear * gamma ** (t - j - window).clamp_min(0)
    weights = exact + linear
    return (weights @ v) / weights.sum(-1, keepdim=True)


STATE_NAMES = ("exact_k", "exact_v", "kv", "k_sum")


@functools.cache
def _identity_rotation(head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin that leave a vector as it is (inputs already rotated)."""
    with torch.inference_mode(False):
        return torch.ones(head_dim), torch.zeros(head_dim)


class KernelStep:
    """One decoding token through the compiled CPU kernel (backbone/kernels/cpu_step.py) for a layer with
    Hedgehog maps: its parameters in the kernel's layout, once per change of the parameters, not per token."""

    def __init__(self, attention: HybridAttention) -> None:
        self.attention = attention
        self._key: tuple | None = None
        self._groups: list[tuple] = []

    def fits_maps(self) -> bool:
        return isinstance(self.attention.feature_map_q, Hedgehog) and isinstance(self.attention.feature_map_k, Hedgehog)

    def ready(self, q: torch.Tensor, state: LayerState | None) -> bool:
        """One token of one float32 sequence on CPU, no gradients, and the numba backend chosen."""
        return (state is not None and q.shape[0] == 1 and q.shape[2] == 1 and q.device.type == "cpu"
                and q.dtype == torch.float32 and not torch.is_grad_enabled() and self.fits_maps()
                and resolve_backend(self.attention.backend, q, False, step=True) == "numba")

    def parameter_groups(self) -> list[tuple]:
        """Per group of key/value heads sharing a window: (first, stop, query slice, state name prefix,
        (q map weight, bias), (k map weight, bias), log_weight, decay) in the kernel's layout."""
        attention, spec = self.attention, self.attention.spec
        maps = (attention.feature_map_q, attention.feature_map_k)
        tensors = [t for m in maps for t in (m.weight, m.bias)] + [attention.log_weight]
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        if key != self._key:
            q_weight, q_bias, k_weight, k_bias, log_weight = (t.detach().float() for t in tensors)
            decay = (torch.ones(spec.state_heads) if attention.log_decay is None
                     else torch.exp(attention.log_decay.float()))
            per_query, per_state = len(log_weight) // spec.kv_heads, spec.state_heads // spec.kv_heads
            self._groups = []
            for first, stop, _ in spec.head_groups():
                queries, states = slice(first * per_query, stop * per_query), slice(first * per_state, stop * per_state)
                self._groups.append((
                    first, stop, queries, group_prefix(first, stop) if spec.head_windows else "",
                    (q_weight[queries].contiguous(), q_bias[queries, 0].contiguous()),
                    (k_weight[states].contiguous(), k_bias[states, 0].contiguous()),
                    log_weight[queries].contiguous(), decay[states].contiguous().cpu(),
                ))
            self._key = key
        return self._groups

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotation: tuple | None,
                 sink_q: torch.Tensor | None, sink_rotation: tuple | None, state: LayerState) -> torch.Tensor:
        """q (1, Hq, 1, D), k and v (1, Hkv, 1, D); `rotation` (cos, sin) of shape (D,) is applied to q and k
        inside (None: they are already rotated), `sink_rotation` to `sink_q`. Advances `state` in place."""
        from backbone.kernels.cpu_step import hybrid_step

        _, q_heads, _, head_dim = q.shape
        if rotation is None or (sink_q is not None and sink_rotation is None):
            identity = _identity_rotation(head_dim)
            rotation, sink_rotation = rotation or identity, sink_rotation or identity
        q, k, v = q.reshape(q_heads, head_dim), k.reshape(-1, head_dim), v.reshape(-1, head_dim)
        sink_q = None if sink_q is None else sink_q.reshape(q_heads, head_dim)
        t, sinks, outputs = state.num_tokens, self.attention.spec.sinks, []
        for first, stop, queries, prefix, q_map, k_map, log_weight, decay in self.parameter_groups():
            tensors = {name: state.tensors[prefix + name] for name in STATE_NAMES}
            sink = None if sink_q is None else (sink_q[queries], *sink_rotation)
            outputs.append(hybrid_step(q[queries], k[first:stop], v[first:stop], *rotation, sink, tensors, q_map,
                                       k_map, log_weight, decay, t, sinks))
        state.num_tokens = t + 1
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        return out.view(1, q_heads, 1, head_dim)


class HybridAttention(nn.Module):
    """Trainable hybrid attention of one layer: feature maps for queries and keys plus the per-head mix.

    Keys are mapped per key/value head by default, so the linear sums are (Hkv, F, D): 3 MB in float32 over
    the 30 layers of SmolLM2's shape, beside 45 KiB per exact (sink or window) token;
    `key_map_per_query_head` gives every query head its own key map at three times the linear-state size.
    `decay_horizon` H sets γ = 1 − 1/H on every state head (None: no decay), so the linear part weighs
    about the last H keys past the window. `window` is one for every head, or one per key/value head.
    """

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        sinks: int = 4,
        window: int | tuple[int, ...] = 64,
        feature_map: str = "hedgehog",
        feature_dim: int | None = None,
        key_map_per_query_head: bool = False,
        mix_init: float = 0.0,
        decay_horizon: float | None = None,
        chunk_size: int = CHUNK_SIZE,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if decay_horizon is not None and decay_horizon < 1:
            raise ValueError(f"decay_horizon must be at least 1 token (γ = 1 − 1/H), got {decay_horizon}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        state_heads = num_heads if key_map_per_query_head else num_kv_heads
        if not isinstance(window, int) and len(window) != num_kv_heads:
            raise ValueError(f"per-head windows need one window per key/value head ({num_kv_heads}); got {window}")
        head_windows = () if isinstance(window, int) or len(set(window)) == 1 else tuple(window)
        self.feature_map_q = make_feature_map(feature_map, head_dim, num_heads, feature_dim)
        self.feature_map_k = make_feature_map(feature_map, head_dim, state_heads, feature_dim)
        self.log_weight = nn.Parameter(torch.full((num_heads,), float(mix_init)))
        log_decay = None if decay_horizon is None else torch.full((state_heads,), math.log1p(-1.0 / decay_horizon))
        self.register_buffer("log_decay", log_decay, persistent=False)
        self.chunk_size = chunk_size
        self.backend = backend
        self.kernel_step = KernelStep(self)
        self.spec = StateSpec(
            layer_kind="hybrid",
            num_layers=1,
            kv_heads=num_kv_heads,
            state_heads=state_heads,
            head_dim=head_dim,
            feature_dim=self.feature_map_q.feature_dim,
            sinks=sinks,
            window=window if isinstance(window, int) else max(window),
            head_windows=head_windows,
        )

    def new_state(self, batch: int = 1, device=None, dtype=torch.float32) -> LayerState:
        return LayerState.empty(self.spec, batch, device, dtype)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        state: LayerState | None = None,
        sink_q: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return hybrid_attention(
            q,
            k,
            v,
            feature_map_q=self.feature_map_q,
            feature_map_k=self.feature_map_k,
            log_weight=self.log_weight,
            spec=self.spec,
            state=state,
            log_decay=self.log_decay,
            sink_q=sink_q,
            chunk_size=self.chunk_size,
            backend=self.backend,
            kernel_step=self.kernel_step,
        )
