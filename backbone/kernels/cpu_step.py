"""Compiled CPU kernels (Numba, LLVM) for decoding one token: the hybrid attention step with Hedgehog
feature maps, and the whole int8 student's token (embedding, layers, LM head) around it.

Why compiled: a decoding token of a 135M model is ~120 matrix-vector products and ~1,500 small ops; in
PyTorch the small ops' dispatch (a few µs each) and fbgemm's per-call overhead cost more than the
arithmetic. Here each piece is plain loops, compiled once and cached on disk. Everything lives in this one
file because Numba's cache is keyed by the file of the function it compiled: a kernel that called into
another file would keep a stale copy of its callee after that file changed.

`backbone.attention.hybrid._step` specifies the attention step (and the tests compare the two): fold the
key leaving the window into the decayed linear sums, write the new key and value to the ring, then one
softmax over the sinks, the window and the linear part taken as one more key. RoPE is applied inside, so
callers hand over projections as they come out of the matrix product.

Attention shapes (one sequence, one group of key/value heads sharing a window; float32, contiguous):
    q (Gq, D), k and v (Hkv, D), q and k before RoPE; cos, sin (D,) of the position; sink_q (Gq, D) with
    sink_cos and sink_sin (D,), the query that scores the sinks and its rotation (when use_sink_q);
    exact_k and exact_v (Hkv, sinks + window, D); kv (Hs, F, D) and k_sum (Hs, F); Hedgehog weights
    (Gq, D, F/2) and (Hs, D, F/2), biases (Gq, F/2) and (Hs, F/2); log_weight (Gq,); decay (Hs,) with 1
    where the sums do not decay; out (Gq, D).

The student's products read the int8 tables of backbone/quantize.py (one scale per output row) and multiply
them with float32 activations ("W8A32"): the weights stream at int8's 1 byte, and the activations are not
quantized at all. SmoothQuant's input factors are folded into the RMSNorm weights before the smoothed
products. The large products split their rows over threads (`prange`), which pays where weights stream
from memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch

try:
    import numba
    from numba import prange
except ImportError:  # the PyTorch step serves instead (dispatch.py)
    numba = None
    prange = range

TINY = float(np.finfo(np.float32).tiny)


def available() -> bool:
    return numba is not None


def _jit(function=None, *, parallel: bool = False):
    # Reassociation lets LLVM vectorise the dot products; no other fast-math flag, so infinities and the
    # smallest normal float keep their IEEE meaning.
    def compile_(function):
        if numba is None:
            return function
        return numba.njit(cache=True, nogil=True, error_model="numpy", parallel=parallel,
                          fastmath={"reassoc", "contract"})(function)
    return compile_(function) if function is not None else compile_


@_jit
def _rotate(x, cos, sin, out):
    half = x.shape[0] // 2
    for i in range(half):
        out[i] = x[i] * cos[i] - x[i + half] * sin[i]
        out[i + half] = x[i + half] * cos[i + half] + x[i] * sin[i + half]


@_jit
def _hedgehog(x, weight, bias, out):
    """out = [softmax(xW + b), softmax(−(xW + b))] for one head: x (D,), weight (D, half), bias (half,)."""
    half = weight.shape[1]
    z = bias.copy()
    for d in range(x.shape[0]):
        xd = x[d]
        for f in range(half):
            z[f] += xd * weight[d, f]
    positive = negative = np.float32(0.0)
    high, low = z.max(), z.min()
    for f in range(half):
        out[f] = math.exp(z[f] - high)
        out[f + half] = math.exp(low - z[f])
        positive += out[f]
        negative += out[f + half]
    for f in range(half):
        out[f] /= positive
        out[f + half] /= negative


@_jit
def hybrid_step_kernel(q, k, v, cos, sin, sink_q, sink_cos, sink_sin, exact_k, exact_v, kv, k_sum,
                       q_weight, q_bias, k_weight, k_bias, log_weight, decay, t, sinks, use_sink_q, out):
    query_heads, head_dim = q.shape
    kv_heads, slots = exact_k.shape[0], exact_k.shape[1]
    state_heads, features = kv.shape[0], kv.shape[1]
    window = slots - sinks
    groups = query_heads // kv_heads
    states_per_kv = state_heads // kv_heads
    queries_per_state = query_heads // state_heads
    slot = sinks + t % window
    features_k = np.empty(features, np.float32)

    if t - window >= sinks:  # the key leaving the window joins the (decayed) linear sums
        for s in range(state_heads):
            h = s // states_per_kv
            _hedgehog(exact_k[h, slot], k_weight[s], k_bias[s], features_k)
            gamma = decay[s]
            leaving_v = exact_v[h, slot]
            for f in range(features):
                k_sum[s, f] = k_sum[s, f] * gamma + features_k[f]
                phi = features_k[f]
                for d in range(head_dim):
                    kv[s, f, d] = kv[s, f, d] * gamma + phi * leaving_v[d]
    for h in range(kv_heads):
        _rotate(k[h], cos, sin, exact_k[h, slot])
        exact_v[h, slot] = v[h]
        if t < sinks:
            exact_k[h, t] = exact_k[h, slot]
            exact_v[h, t] = v[h]

    scale = 1.0 / math.sqrt(head_dim)
    rotated = np.empty(head_dim, np.float32)
    sink_rotated = np.empty(head_dim, np.float32)
    features_q = np.empty(features, np.float32)
    scores = np.empty(slots, np.float32)
    attended = np.empty(slots, np.bool_)
    for j in range(slots):  # while warming up: unwritten sink slots and ring slots holding a sink are skipped
        if j < sinks:
            attended[j] = j <= t
        else:
            attended[j] = t - (t - (j - sinks)) % window >= sinks
    for qh in range(query_heads):
        h, s = qh // groups, qh // queries_per_state
        _rotate(q[qh], cos, sin, rotated)
        if use_sink_q:
            _rotate(sink_q[qh], sink_cos, sink_sin, sink_rotated)
        else:
            sink_rotated[:] = rotated
        high = -np.inf
        for j in range(slots):
            if not attended[j]:
                continue
            query = sink_rotated if j < sinks else rotated
            score = np.float32(0.0)
            for d in range(head_dim):
                score += query[d] * exact_k[h, j, d]
            scores[j] = score * scale
            high = max(high, scores[j])
        _hedgehog(rotated, q_weight[qh], q_bias[qh], features_q)
        mass = np.float32(0.0)
        for f in range(features):
            mass += features_q[f] * k_sum[s, f]
        mass = max(mass, TINY)
        linear_score = math.log(mass) + log_weight[qh]
        high = max(high, linear_score)
        linear_weight = math.exp(linear_score - high)
        total = linear_weight
        row = out[qh]
        row[:] = 0.0
        for f in range(features):  # the linear part's value φ(q)ᵀS / φ(q)·z, weighted
            factor = features_q[f] * (linear_weight / mass)
            for d in range(head_dim):
                row[d] += factor * kv[s, f, d]
        for j in range(slots):
            if not attended[j]:
                continue
            weight = math.exp(scores[j] - high)
            total += weight
            for d in range(head_dim):
                row[d] += weight * exact_v[h, j, d]
        for d in range(head_dim):
            row[d] /= total


@_jit(parallel=True)
def int8_matvec(x, weight, scale, out):
    """out = diag(scale) · weight · x, weight int8 (out, in); rows split over the threads."""
    rows, columns = weight.shape
    for row in prange(rows):
        total = np.float32(0.0)
        for column in range(columns):
            total += x[column] * np.float32(weight[row, column])
        out[row] = total * scale[row]


@_jit()
def rms_norm(x, weight, eps, out):
    total = np.float32(0.0)
    for i in range(x.shape[0]):
        total += x[i] * x[i]
    factor = np.float32(1.0 / math.sqrt(total / x.shape[0] + eps))
    for i in range(x.shape[0]):
        out[i] = x[i] * factor * weight[i]


@_jit()
def decode_token(embedding_rows, embedding_scale, token, attention_norms, qkv_weights, qkv_scales, o_weights,
                 o_scales, mlp_norms, gate_up_weights, gate_up_scales, down_weights, down_scales, final_norm,
                 head_weight, head_scale, eps, num_heads, num_kv_heads, head_dim, group_starts, group_heads,
                 q_weights, q_biases, k_weights, k_biases, log_weights, decays, exact_ks, exact_vs, kvs, k_sums,
                 cos, sin, sink_cos, sink_sin, use_sink_q, t, sinks, logits):
    """One token at position t through every layer; the state arrays are updated in place, `logits`
    (vocab,) written. Layer i's attention runs groups group_starts[i] .. group_starts[i+1] − 1, group g
    covering key/value heads group_heads[g, 0] .. group_heads[g, 1] − 1."""
    dim = embedding_rows.shape[1]
    x = embedding_rows[token].astype(np.float32) * embedding_scale[token]
    normed = np.empty(dim, np.float32)
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qkv = np.empty(q_size + 2 * kv_size, np.float32)
    context = np.empty((num_heads, head_dim), np.float32)
    projected = np.empty(dim, np.float32)
    hidden = gate_up_weights[0].shape[0] // 2
    gate_up = np.empty(2 * hidden, np.float32)
    activated = np.empty(hidden, np.float32)
    queries_per_kv = num_heads // num_kv_heads
    for layer in range(len(qkv_weights)):
        rms_norm(x, attention_norms[layer], eps, normed)
        int8_matvec(normed, qkv_weights[layer], qkv_scales[layer], qkv)
        q = qkv[:q_size].reshape((num_heads, head_dim))
        k = qkv[q_size : q_size + kv_size].reshape((num_kv_heads, head_dim))
        v = qkv[q_size + kv_size :].reshape((num_kv_heads, head_dim))
        for group in range(group_starts[layer], group_starts[layer + 1]):
            first, stop = group_heads[group, 0], group_heads[group, 1]
            queries = slice(first * queries_per_kv, stop * queries_per_kv)
            hybrid_step_kernel(q[queries], k[first:stop], v[first:stop], cos, sin, q[queries], sink_cos, sink_sin,
                               exact_ks[group], exact_vs[group], kvs[group], k_sums[group], q_weights[group],
                               q_biases[group], k_weights[group], k_biases[group], log_weights[group], decays[group],
                               t, sinks, use_sink_q, context[queries])
        int8_matvec(context.reshape(q_size), o_weights[layer], o_scales[layer], projected)
        x += projected
        rms_norm(x, mlp_norms[layer], eps, normed)
        int8_matvec(normed, gate_up_weights[layer], gate_up_scales[layer], gate_up)
        for i in range(hidden):
            gate = gate_up[i]
            activated[i] = gate / (np.float32(1.0) + np.exp(-gate)) * gate_up[hidden + i]
        int8_matvec(activated, down_weights[layer], down_scales[layer], projected)
        x += projected
    rms_norm(x, final_norm, eps, normed)
    int8_matvec(normed, head_weight, head_scale, logits)


def hybrid_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                sink: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, tensors: dict[str, torch.Tensor],
                q_map: tuple[torch.Tensor, torch.Tensor], k_map: tuple[torch.Tensor, torch.Tensor],
                log_weight: torch.Tensor, decay: torch.Tensor, t: int, sinks: int) -> torch.Tensor:
    """One group's step on torch tensors (shared with the kernel, the state updated in place); returns the
    output (Gq, D). `sink` is (sink_q, sink_cos, sink_sin) or None; the maps are (weight, bias). Shapes as in
    the module docstring."""
    out = torch.empty_like(q)
    sink_q, sink_cos, sink_sin = (q, cos, sin) if sink is None else sink
    hybrid_step_kernel(q.numpy(), k.numpy(), v.numpy(), cos.numpy(), sin.numpy(), sink_q.numpy(), sink_cos.numpy(),
                       sink_sin.numpy(), tensors["exact_k"][0].numpy(), tensors["exact_v"][0].numpy(),
                       tensors["kv"][0].numpy(), tensors["k_sum"][0].numpy(), q_map[0].numpy(), q_map[1].numpy(),
                       k_map[0].numpy(), k_map[1].numpy(), log_weight.numpy(), decay.numpy(), t, sinks,
                       sink is not None, out.numpy())
    return out
