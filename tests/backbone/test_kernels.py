"""Triton kernels, run in Triton's interpreter on CPU, against the float64 reference; backend dispatch."""

import os

import pytest
import torch

from backbone.attention import LinearState, naive_linear_attention
from backbone.attention.dispatch import linear_attention, linear_decode_step, resolve_backend
from tests.backbone.attention_helpers import relative_rms
from tests.backbone.test_attention_hybrid import make_attention, random_qkv, reference
from tests.backbone.test_attention_linear import random_inputs

# Triton reads TRITON_INTERPRET when it is imported: tests/conftest.py sets it on machines without a GPU.
# Where a GPU is visible, the compiled kernels are checked instead (test_kernels_cuda.py).
interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="Triton was imported without its interpreter (a CUDA machine); "
                                 "test_kernels_cuda.py checks the compiled kernels there")


@interpreter
@pytest.mark.parametrize(
    ("length", "head_dim", "heads", "kv_heads", "decayed", "normalize", "with_state"),
    [
        (1, 64, 9, 3, False, True, False),
        (63, 60, 4, 2, True, True, True),
        (64, 64, 2, 2, True, False, False),
        (65, 60, 3, 1, False, True, True),
        (500, 64, 6, 3, True, True, True),
    ],
)
def test_triton_chunked_and_step_match_reference(
    length, head_dim, heads, kv_heads, decayed, normalize, with_state
):
    torch.manual_seed(length)
    q, k, v, state = random_inputs(1, heads, kv_heads, length, head_dim, head_dim)
    decay = torch.linspace(0.85, 1.0, kv_heads) if decayed else None
    initial = state if with_state else None
    expected, expected_state = naive_linear_attention(q, k, v, decay=decay, normalize=normalize, initial_state=initial)
    out, final = linear_attention(q, k, v, decay=decay, normalize=normalize, initial_state=initial, backend="triton")
    assert relative_rms(out, expected) < 1e-5
    assert relative_rms(final.kv, expected_state.kv) < 1e-5
    assert relative_rms(final.k_sum, expected_state.k_sum) < 1e-5

    # the fused step continues the chunked prefill exactly
    step = LinearState(final.kv.clone(), final.k_sum.clone())
    q1, k1, v1, _ = random_inputs(1, heads, kv_heads, 1, head_dim, head_dim)
    out1, step = linear_decode_step(q1[:, :, 0], k1[:, :, 0], v1[:, :, 0], step, decay=decay, normalize=normalize,
                                    backend="triton")  # fmt: skip
    whole, whole_state = naive_linear_attention(
        torch.cat([q, q1], 2), torch.cat([k, k1], 2), torch.cat([v, v1], 2), decay=decay, normalize=normalize,
        initial_state=initial,
    )  # fmt: skip
    assert relative_rms(out1, whole[:, :, -1]) < 1e-5
    assert relative_rms(step.kv, whole_state.kv) < 1e-5


@interpreter
@pytest.mark.parametrize("horizon", [None, 40.0])
def test_hybrid_attention_with_triton_linear_part(horizon):
    attention = make_attention(6, 3, 64, 4, 64, seed=9, horizon=horizon)
    attention.backend = "triton"
    q, k, v = random_qkv(1, 6, 3, 200, 64)
    sink_q = None if horizon is None else torch.randn_like(q)
    with torch.no_grad():
        out = attention(q, k, v, sink_q=sink_q)
    assert relative_rms(out, reference(attention, q, k, v, sink_q)) < 1e-4


def test_dispatch_choices_and_refusals(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.delenv("RILLET_ATTENTION_BACKEND", raising=False)
    assert resolve_backend("auto", x, needs_grad=False) == "torch"  # CPU
    assert resolve_backend("triton", x, needs_grad=False) == "triton"
    with pytest.raises(ValueError, match="forward-only"):
        resolve_backend("triton", x, needs_grad=True)
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("cuda", x, needs_grad=False)
    monkeypatch.setenv("RILLET_ATTENTION_BACKEND", "triton")
    assert resolve_backend("auto", x, needs_grad=False) == "triton"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, _ = random_inputs(1, 2, 1, 4, 16, 16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        linear_attention(q, k, v)
