"""Causal linear attention: naive (float64) vs chunked vs recurrent, with decay, normaliser, GQA, state."""

import pytest
import torch
import torch.nn.functional as F

from backbone.attention import (
    LinearState,
    chunked_linear_attention,
    linear_attention_step,
    naive_linear_attention,
    recurrent_linear_attention,
)
from tests.backbone.attention_helpers import relative_rms


def random_inputs(batch, heads, kv_heads, length, features, value_dim, dtype=torch.float32):
    """Positive features (as a feature map would give) so the normaliser is well defined."""
    q = F.elu(torch.randn(batch, heads, length, features, dtype=dtype)) + 1
    k = F.elu(torch.randn(batch, kv_heads, length, features, dtype=dtype)) + 1
    v = torch.randn(batch, kv_heads, length, value_dim, dtype=dtype)
    state = LinearState(
        torch.randn(batch, kv_heads, features, value_dim, dtype=dtype),
        torch.rand(batch, kv_heads, features, dtype=dtype) * 5 + 1,
    )
    return q, k, v, state


@pytest.mark.parametrize("length", [1, 63, 64, 65, 500])
@pytest.mark.parametrize("head_dim", [60, 64])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "decayed", "normalize", "with_state"),
    [(9, 3, False, True, False), (4, 4, True, True, True), (6, 2, True, False, False), (3, 1, False, False, True)],
)
def test_three_forms_agree(length, head_dim, heads, kv_heads, decayed, normalize, with_state):
    torch.manual_seed(length + head_dim)
    q, k, v, state = random_inputs(2, heads, kv_heads, length, head_dim, head_dim)
    decay = torch.linspace(0.8, 1.0, kv_heads) if decayed else None
    initial = state if with_state else None
    kwargs = {"decay": decay, "normalize": normalize, "initial_state": initial}
    expected, expected_state = naive_linear_attention(q, k, v, **kwargs)
    forms = [chunked_linear_attention(q, k, v, **kwargs)]
    if length <= 65:  # the token-by-token loop is slow in Python; 65 steps cover a chunk boundary
        forms.append(recurrent_linear_attention(q, k, v, **kwargs))
    for out, final in forms:
        assert out.dtype == torch.float32
        assert relative_rms(out, expected) < 1e-5
        assert relative_rms(final.kv, expected_state.kv) < 1e-5
        assert relative_rms(final.k_sum, expected_state.k_sum) < 1e-5


def test_chunked_gradients_match_naive():
    torch.manual_seed(1)
    q, k, v, state = random_inputs(1, 4, 2, 150, 16, 12, dtype=torch.float64)
    decay = torch.tensor([0.9, 0.97], dtype=torch.float64)
    leaves = [q, k, v, state.kv, state.k_sum]
    for x in leaves:
        x.requires_grad_()
    grads = []
    for attend in (chunked_linear_attention, naive_linear_attention):
        out, final = attend(q, k, v, decay=decay, initial_state=state)
        (out.pow(2).sum() + final.kv.sum() + final.k_sum.pow(2).sum()).backward()
        grads.append([x.grad.clone() for x in leaves])
        for x in leaves:
            x.grad = None
    for fast, slow in zip(*grads, strict=True):
        assert relative_rms(fast, slow) < 1e-10


@pytest.mark.parametrize("decayed", [False, True])
def test_split_sequence_equals_one_call(decayed):
    torch.manual_seed(2)
    q, k, v, _ = random_inputs(1, 6, 3, 300, 32, 32)
    decay = torch.tensor([0.95, 0.99, 1.0]) if decayed else None
    whole, whole_state = chunked_linear_attention(q, k, v, decay=decay)
    state, pieces, start = None, [], 0
    for end in (1, 64, 100, 229, 300):
        out, state = chunked_linear_attention(
            q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], decay=decay, initial_state=state
        )
        pieces.append(out)
        start = end
    out, state = linear_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], state, decay=decay)
    assert relative_rms(torch.cat(pieces, 2), whole) < 1e-5
    assert relative_rms(state.kv, whole_state.kv) > 1e-3  # the step did advance the state


def test_bad_inputs_and_foreign_state_are_refused():
    q, k, v, _ = random_inputs(1, 4, 2, 10, 8, 8)
    with pytest.raises(ValueError, match="share batch and time"):
        chunked_linear_attention(q, k[:, :, :5], v)
    with pytest.raises(ValueError, match="feature sizes differ"):
        chunked_linear_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="one value per key head"):
        chunked_linear_attention(q, k, v, decay=torch.ones(4))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        chunked_linear_attention(q, k, v, decay=torch.tensor([0.5, 1.5]))
    foreign = LinearState(torch.zeros(1, 2, 8, 16), torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match="another configuration"):
        chunked_linear_attention(q, k, v, initial_state=foreign)
    with pytest.raises(ValueError, match="another configuration"):
        linear_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], foreign)
