"""Linformer and FNet: exact against independent float64 formulas, and refused in causal settings."""

import math

import pytest
import torch

from backbone.attention.non_causal import CausalMixingError, FNet, Linformer
from tests.backbone.attention_helpers import relative_rms


def qkv(length, head_dim, dtype=torch.float32):
    torch.manual_seed(length)
    return (torch.randn(2, 4, length, head_dim, dtype=dtype), torch.randn(2, 2, length, head_dim, dtype=dtype),
            torch.randn(2, 2, length, head_dim, dtype=dtype))  # fmt: skip


@pytest.mark.parametrize("length", [1, 63, 100])
def test_linformer_with_identity_projection_is_full_softmax_attention(length):
    q, k, v = qkv(length, 60)
    linformer = Linformer(max_length=length, rank=length)
    with torch.no_grad():
        linformer.key_projection.copy_(torch.eye(length))
        linformer.value_projection.copy_(torch.eye(length))
        out = linformer(q, k, v)
    q, k, v = q.double(), k.double().repeat_interleave(2, 1), v.double().repeat_interleave(2, 1)
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(60), dim=-1) @ v
    assert relative_rms(out, expected) < 1e-5


def test_linformer_projects_with_its_matrices():
    q, k, v = qkv(50, 64)
    linformer = Linformer(max_length=80, rank=16, seed=3)
    with torch.no_grad():
        out = linformer(q, k, v)
        e, f = linformer.key_projection[:, :50].double(), linformer.value_projection[:, :50].double()
    keys, values = e @ k.double().repeat_interleave(2, 1), f @ v.double().repeat_interleave(2, 1)
    expected = torch.softmax(q.double() @ keys.transpose(-1, -2) / 8, dim=-1) @ values
    assert relative_rms(out, expected) < 1e-5
    assert torch.equal(Linformer(80, 16, seed=3).key_projection, linformer.key_projection)  # seeded


@pytest.mark.parametrize("length", [1, 63, 64])
def test_fnet_matches_explicit_fourier_matrices(length):
    q, k, v = qkv(length, 60)
    out = FNet()(q, k, v)

    def dft(n):
        angle = 2 * math.pi * torch.outer(torch.arange(n), torch.arange(n)).double() / n
        return torch.cos(angle), torch.sin(angle)

    (ct, st), (cd, sd) = dft(length), dft(60)
    v = v.double().repeat_interleave(2, 1)
    expected = (ct @ v @ cd - st @ v @ sd) / math.sqrt(length * 60)  # Re[(C − iS) v (C − iS)]
    assert relative_rms(out, expected) < 1e-5


@pytest.mark.parametrize("mixer", [Linformer(max_length=32), FNet()])
def test_causal_use_is_refused_with_a_reason(mixer):
    q, k, v = qkv(8, 16)
    with pytest.raises(CausalMixingError, match="would see later tokens"):
        mixer(q, k, v, causal=True)
    with pytest.raises(CausalMixingError, match="no recurrent state"):
        mixer.step(q, k, v)


def test_linformer_refuses_longer_sequences_than_built_for():
    with pytest.raises(ValueError, match="at most 32 tokens"):
        Linformer(max_length=32)(*qkv(40, 16))
