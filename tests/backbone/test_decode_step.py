"""The lean decoding step of hybrid attention (one token at a time, the linear part folded into one softmax)
and the single-sequence form of the Hedgehog map, each against its float64 definition."""

import pytest
import torch

from backbone.attention.feature_maps import Hedgehog
from tests.backbone.attention_helpers import relative_rms
from tests.backbone.test_attention_hybrid import make_attention, random_qkv, reference

STEP_CASES = [  # (heads, kv_heads, head_dim, sinks, window, per_query, batch)
    (9, 3, 64, 4, 64, False, 1),  # SmolLM2's shape
    (6, 2, 60, 0, 8, True, 2),  # no sinks, keys mapped per query head, a batch
    (2, 1, 16, 3, 1, False, 1),  # a one-token window: warm-up ends at once
    (4, 4, 32, 5, 3, False, 3),  # more sinks than window slots
]


@pytest.mark.parametrize("case", STEP_CASES)
@pytest.mark.parametrize(("mix", "scale"), [(None, 1.5), (-30.0, 6.0), (12.0, 6.0)])
def test_steps_from_an_empty_state_match_the_definition(case, mix, scale):
    heads, kv_heads, head_dim, sinks, window, per_query, batch = case
    attention = make_attention(heads, kv_heads, head_dim, sinks, window, per_query, seed=window, mix=mix)
    length = sinks + 3 * window + 11  # warm-up, the window filling, then keys moving into the linear sums
    q, k, v = random_qkv(batch, heads, kv_heads, length, head_dim, scale=scale)
    state = attention.new_state(batch=batch)
    with torch.no_grad():
        steps = [attention(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state) for t in range(length)]
    out = torch.cat(steps, dim=2)
    assert state.num_tokens == length and torch.isfinite(out).all()
    expected = reference(attention, q, k, v)
    for t in (0, 1, sinks + window - 1, length - 1):  # every phase on its own, not only on average
        assert relative_rms(out[:, :, t], expected[:, :, t]) < 1e-4, t
    assert relative_rms(out, expected) < 1e-4


def test_steps_continue_a_prefilled_state():
    attention = make_attention(9, 3, 64, 4, 64, seed=7)
    q, k, v = random_qkv(1, 9, 3, 500, 64)
    state = attention.new_state()
    with torch.no_grad():
        first = attention(q[:, :, :437], k[:, :, :437], v[:, :, :437], state)
        rest = [attention(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state) for t in range(437, 500)]
    assert relative_rms(torch.cat([first, *rest], dim=2), reference(attention, q, k, v)) < 1e-4


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (1, 63), (3, 1), (2, 500)])
def test_hedgehog_single_sequence_and_batch_forms_match_the_definition(batch, length):
    torch.manual_seed(length)
    hedgehog = Hedgehog(16, num_heads=3, half_dim=8).double()
    with torch.no_grad():
        hedgehog.weight.normal_()
        hedgehog.bias.normal_()
    x = torch.randn(batch, 3, length, 16, dtype=torch.float64, requires_grad=True)
    z = torch.einsum("bhtd,hdf->bhtf", x, hedgehog.weight) + hedgehog.bias
    expected = torch.cat([torch.softmax(z, -1), torch.softmax(-z, -1)], -1)
    out = hedgehog(x)
    assert out.shape == (batch, 3, length, 16)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), (x, hedgehog.weight, hedgehog.bias))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (x, hedgehog.weight, hedgehog.bias))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_float32_map_of_float64_inputs_and_back():
    hedgehog = Hedgehog(8, num_heads=2)
    x = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    assert hedgehog(x).dtype == torch.float64
    torch.testing.assert_close(hedgehog(x.float()), hedgehog(x).float())
