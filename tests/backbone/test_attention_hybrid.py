"""Hybrid attention (sinks + window exact, linear between): every form against the float64 definition."""

import dataclasses
import itertools

import pytest
import torch

from backbone.attention import HybridAttention, RecurrentState, naive_hybrid_attention
from tests.backbone.attention_helpers import relative_rms


def make_attention(heads, kv_heads, head_dim, sinks, window, per_query=False, seed=0, mix=None, horizon=None):
    """A hybrid attention with random (trained-looking) feature maps and mix weights."""
    torch.manual_seed(seed)
    attention = HybridAttention(heads, kv_heads, head_dim, sinks=sinks, window=window, key_map_per_query_head=per_query,
                                decay_horizon=horizon)
    with torch.no_grad():
        for feature_map in (attention.feature_map_q, attention.feature_map_k):
            feature_map.weight.normal_(0, 0.5)
            feature_map.bias.normal_()
        if mix is None:
            attention.log_weight.normal_()
        else:
            attention.log_weight.fill_(mix)
    return attention


def random_qkv(batch, heads, kv_heads, length, head_dim, scale=1.5, dtype=torch.float32):
    q = torch.randn(batch, heads, length, head_dim, dtype=dtype) * scale
    k = torch.randn(batch, kv_heads, length, head_dim, dtype=dtype) * scale
    v = torch.randn(batch, kv_heads, length, head_dim, dtype=dtype)
    return q, k, v


def reference(attention, q, k, v, sink_q=None):
    """The float64 masked definition with the module's own (float64) feature maps."""
    spec = attention.spec
    double = HybridAttention(
        q.shape[1],
        k.shape[1],
        q.shape[-1],
        sinks=spec.sinks,
        window=spec.head_windows or spec.window,
        key_map_per_query_head=spec.state_heads != spec.kv_heads,
    ).double()
    double.load_state_dict(attention.state_dict())
    k64 = k.double().repeat_interleave(spec.state_heads // spec.kv_heads, 1)
    with torch.no_grad():
        features_q, features_k = double.feature_map_q(q.double()), double.feature_map_k(k64)
    decay = None if attention.log_decay is None else attention.log_decay.double().exp()
    return naive_hybrid_attention(q, k, v, features_q, features_k, double.log_weight.detach(), spec.sinks,
                                  spec.head_windows or spec.window, decay=decay, sink_q=sink_q)


CASES = [  # (heads, kv_heads, head_dim, sinks, window, per_query)
    (9, 3, 64, 4, 64, False),
    (4, 4, 60, 4, 16, False),
    (6, 2, 60, 0, 8, True),
    (2, 1, 64, 3, 5, False),
]


@pytest.mark.parametrize("length", [1, 63, 64, 65, 500])
@pytest.mark.parametrize("case", CASES)
def test_full_sequence_matches_definition(case, length):
    heads, kv_heads, head_dim, sinks, window, per_query = case
    attention = make_attention(heads, kv_heads, head_dim, sinks, window, per_query, seed=length)
    q, k, v = random_qkv(2, heads, kv_heads, length, head_dim)
    with torch.no_grad():
        out = attention(q, k, v)
    assert out.shape == q.shape and out.dtype == torch.float32
    assert relative_rms(out, reference(attention, q, k, v)) < 1e-4


def test_float64_form_is_exact_and_linear_part_matters():
    attention = make_attention(9, 3, 64, 4, 16, mix=2.0).double()
    q, k, v = random_qkv(1, 9, 3, 200, 64, dtype=torch.float64)
    with torch.no_grad():
        out = attention(q, k, v)
        expected = reference(attention, q, k, v)
        features_q, features_k = attention.feature_map_q(q), attention.feature_map_k(k)
        without_linear = naive_hybrid_attention(q, k, v, features_q, features_k, torch.full((9,), -1e9), 4, 16)
    assert relative_rms(out, expected) < 1e-10
    assert relative_rms(without_linear, expected) > 0.05  # the test would see a broken linear part


@pytest.mark.parametrize("mix", [-30.0, 12.0])
def test_extreme_scores_and_mix_stay_finite(mix):
    """Large logits (sharp attention) or a dominant linear part must not overflow in float32."""
    attention = make_attention(4, 2, 64, 4, 16, mix=mix)
    q, k, v = random_qkv(1, 4, 2, 150, 64, scale=6.0)
    with torch.no_grad():
        out = attention(q, k, v)
    assert torch.isfinite(out).all()
    assert relative_rms(out, reference(attention, q, k, v)) < 1e-4


@pytest.mark.parametrize("case", CASES[:3])
def test_split_calls_and_steps_match_one_call(case):
    heads, kv_heads, head_dim, sinks, window, per_query = case
    attention = make_attention(heads, kv_heads, head_dim, sinks, window, per_query, seed=3)
    length = 3 * window + 11
    q, k, v = random_qkv(2, heads, kv_heads, length, head_dim)
    with torch.no_grad():
        whole = attention(q, k, v)
        state = attention.new_state(batch=2)
        pieces, start = [], 0
        for end in (1, 2, window - 1, window + 3, 2 * window + 9, length):  # prefill, steps, prefill ...
            pieces.append(attention(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], state))
            start = end
        stepped_state = attention.new_state(batch=2)
        steps = [
            attention(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], stepped_state) for t in range(length)
        ]
    assert state.num_tokens == stepped_state.num_tokens == length
    assert relative_rms(torch.cat(pieces, 2), whole) < 1e-5
    assert relative_rms(torch.cat(steps, 2), whole) < 1e-5
    for name, tensor in state.tensors.items():
        torch.testing.assert_close(tensor, stepped_state.tensors[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("options", [False, True])
def test_gradients_match_definition(options):
    """Also with decay and sink queries (`options`), which training at long lengths uses."""
    attention = make_attention(4, 2, 16, 2, 8, seed=5, horizon=10.0 if options else None).double()
    q, k, v = (x.requires_grad_() for x in random_qkv(1, 4, 2, 70, 16, dtype=torch.float64))
    sink_q = torch.randn_like(q).requires_grad_() if options else None
    attention(q, k, v, sink_q=sink_q).pow(2).sum().backward()
    inputs = (q, k, v) if sink_q is None else (q, k, v, sink_q)
    fast = [x.grad.clone() for x in inputs] + [p.grad.clone() for p in attention.parameters()]
    for x in (*inputs, *attention.parameters()):
        x.grad = None
    features_q, features_k = attention.feature_map_q(q), attention.feature_map_k(k)
    decay = None if attention.log_decay is None else attention.log_decay.exp()
    naive_hybrid_attention(q, k, v, features_q, features_k, attention.log_weight, 2, 8, decay=decay,
                           sink_q=sink_q).pow(2).sum().backward()
    slow = [x.grad for x in inputs] + [p.grad for p in attention.parameters()]
    for got, expected in zip(fast, slow, strict=True):
        assert relative_rms(got, expected) < 1e-9


def test_state_is_constant_size_and_small_for_the_teacher_shape():
    attention = HybridAttention(9, 3, 64)
    state = RecurrentState.empty(dataclasses.replace(attention.spec, num_layers=30))
    before = state.nbytes
    layer = state.layers[0]
    with torch.no_grad():
        attention(*random_qkv(1, 9, 3, 300, 64), layer)
    assert layer.num_tokens == 300 and state.nbytes == before < 10 * 2**20


def test_bad_inputs_get_clear_errors():
    attention = HybridAttention(4, 2, 16, sinks=2, window=8)
    q, k, v = random_qkv(1, 4, 2, 10, 16)
    with pytest.raises(ValueError, match="share a dtype"):
        attention(q, k.double(), v)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        attention(q[:, :3], k, v)
    with pytest.raises(ValueError, match="do not fit"):
        attention(q, k[:, :1], v[:, :1])
    other = HybridAttention(4, 2, 16, sinks=2, window=16)
    with pytest.raises(ValueError, match="another model configuration"):
        attention(q, k, v, other.new_state())
    with pytest.raises(ValueError, match="dtype"):
        attention(q, k, v, attention.new_state(dtype=torch.float64))


def test_long_prefill_in_segments_matches_one_pass(monkeypatch):
    monkeypatch.setattr("backbone.attention.hybrid.PREFILL_SEGMENT", 40)
    attention = make_attention(4, 2, 16, 2, 8, seed=11)
    q, k, v = random_qkv(1, 4, 2, 130, 16)
    with torch.no_grad():
        whole = attention(q, k, v)
        state = attention.new_state()
        segmented = attention(q, k, v, state)
    assert state.num_tokens == 130
    assert relative_rms(segmented, whole) < 1e-5


@pytest.mark.parametrize("length", [1, 63, 500])
@pytest.mark.parametrize("case", CASES)
def test_decay_and_sink_queries_match_definition(case, length):
    heads, kv_heads, head_dim, sinks, window, per_query = case
    attention = make_attention(heads, kv_heads, head_dim, sinks, window, per_query, seed=length, horizon=30.0)
    q, k, v = random_qkv(2, heads, kv_heads, length, head_dim)
    sink_q = torch.randn_like(q) * 1.5
    with torch.no_grad():
        out = attention(q, k, v, sink_q=sink_q)
    assert relative_rms(out, reference(attention, q, k, v, sink_q)) < 1e-4
    if length > window + sinks:  # both options change the answer, so the comparison above can fail
        if sinks:
            assert relative_rms(out, reference(attention, q, k, v)) > 1e-3
        attention.log_decay = None
        with torch.no_grad():
            assert relative_rms(attention(q, k, v, sink_q=sink_q), out) > 1e-3


@pytest.mark.parametrize("case", CASES[:3])
def test_decay_and_sink_queries_split_and_step_like_one_call(case):
    heads, kv_heads, head_dim, sinks, window, per_query = case
    attention = make_attention(heads, kv_heads, head_dim, sinks, window, per_query, seed=7, horizon=12.0)
    length = 3 * window + 11
    q, k, v = random_qkv(1, heads, kv_heads, length, head_dim)
    sink_q = torch.randn_like(q)
    with torch.no_grad():
        whole = attention(q, k, v, sink_q=sink_q)
        state, pieces, start = attention.new_state(), [], 0
        for end in (2, window + 1, window + 2, 2 * window + 5, length):
            part = slice(start, end)
            pieces.append(attention(q[:, :, part], k[:, :, part], v[:, :, part], state, sink_q=sink_q[:, :, part]))
            start = end
        stepped = attention.new_state()
        steps = [attention(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], stepped,
                           sink_q=sink_q[:, :, t : t + 1]) for t in range(length)]
    assert relative_rms(torch.cat(pieces, 2), whole) < 1e-5
    assert relative_rms(torch.cat(steps, 2), whole) < 1e-5
    for name, tensor in state.tensors.items():
        torch.testing.assert_close(tensor, stepped.tensors[name], rtol=1e-5, atol=1e-5, msg=name)


def test_decay_bounds_the_linear_mass():
    """Each Hedgehog key adds exactly 2 to its k_sum (two softmax halves); with γ = 1 − 1/H the total is
    2·(1 − γⁿ)/(1 − γ) < 2H after n keys joined, without decay it is 2n."""
    sinks, window, length, horizon = 4, 16, 700, 50.0
    joined = length - window - sinks
    for decay_horizon, expected in ((None, 2.0 * joined), (horizon, 2.0 * horizon * (1 - (1 - 1 / horizon) ** joined))):
        attention = make_attention(4, 2, 16, sinks, window, seed=2, horizon=decay_horizon).double()
        state = attention.new_state(dtype=torch.float64)
        with torch.no_grad():
            attention(*random_qkv(1, 4, 2, length, 16, dtype=torch.float64), state)
        torch.testing.assert_close(state.tensors["k_sum"].sum(-1), torch.full((1, 2), expected, dtype=torch.float64))


def test_decay_and_sink_query_errors():
    with pytest.raises(ValueError, match="decay_horizon"):
        HybridAttention(4, 2, 16, decay_horizon=0.5)
    attention = HybridAttention(4, 2, 16, sinks=2, window=8)
    q, k, v = random_qkv(1, 4, 2, 10, 16)
    with pytest.raises(ValueError, match="sink_q must be shaped like q"):
        attention(q, k, v, sink_q=q[:, :, :3])


def test_decoding_step_runs_on_one_thread_and_restores_the_count():
    """The PyTorch step (the compiled one is single-threaded by construction)."""
    attention = make_attention(4, 2, 16, 2, 8, seed=13)
    attention.backend = "torch"
    state = attention.new_state()
    seen = []
    original = attention.feature_map_q.forward
    attention.feature_map_q.forward = lambda x: (seen.append(torch.get_num_threads()), original(x))[1]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            attention(*random_qkv(1, 4, 2, 1, 16), state)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


HEAD_WINDOW_CASES = [  # (heads, kv_heads, head_dim, sinks, per-head windows, per_query)
    (6, 3, 32, 2, (8, 3, 20), False),  # every head its own
    (8, 4, 16, 4, (6, 6, 16, 16), True),  # runs of two heads sharing a window
    (9, 3, 16, 0, (1, 12, 1), False),  # the current token alone, no sinks
]


@pytest.mark.parametrize("length", [1, 63, 500])
@pytest.mark.parametrize("case", HEAD_WINDOW_CASES)
def test_head_windows_match_definition(case, length):
    """Each key/value head with its own window, with decay and sink queries, against the float64 definition."""
    heads, kv_heads, head_dim, sinks, windows, per_query = case
    attention = make_attention(heads, kv_heads, head_dim, sinks, windows, per_query, seed=length, horizon=25.0)
    assert attention.spec.head_windows == windows and attention.spec.window == max(windows)
    q, k, v = random_qkv(2, heads, kv_heads, length, head_dim)
    sink_q = torch.randn_like(q)
    with torch.no_grad():
        out = attention(q, k, v, sink_q=sink_q)
        uniform = make_attention(heads, kv_heads, head_dim, sinks, max(windows), per_query, horizon=25.0)
        uniform.load_state_dict(attention.state_dict())
        widest = uniform(q, k, v, sink_q=sink_q)
    assert relative_rms(out, reference(attention, q, k, v, sink_q)) < 1e-4
    if length > max(windows) + sinks:  # the per-head windows change the answer, so the comparison can fail
        assert relative_rms(out, widest) > 1e-3


@pytest.mark.parametrize("case", HEAD_WINDOW_CASES)
def test_head_windows_split_and_step_like_one_call(case):
    heads, kv_heads, head_dim, sinks, windows, per_query = case
    attention = make_attention(heads, kv_heads, head_dim, sinks, windows, per_query, seed=9, horizon=12.0)
    length = 3 * max(windows) + 11
    q, k, v = random_qkv(2, heads, kv_heads, length, head_dim)
    sink_q = torch.randn_like(q)
    with torch.no_grad():
        whole = attention(q, k, v, sink_q=sink_q)
        state, pieces, start = attention.new_state(batch=2), [], 0
        for end in (1, 2, 7, 8, 2 * max(windows) + 5, length):
            part = slice(start, end)
            pieces.append(attention(q[:, :, part], k[:, :, part], v[:, :, part], state, sink_q=sink_q[:, :, part]))
            start = end
        stepped = attention.new_state(batch=2)
        steps = [attention(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], stepped,
                           sink_q=sink_q[:, :, t : t + 1]) for t in range(length)]
    assert state.num_tokens == stepped.num_tokens == length
    assert relative_rms(torch.cat(pieces, 2), whole) < 1e-5
    assert relative_rms(torch.cat(steps, 2), whole) < 1e-5
    runs = 1 + sum(a != b for a, b in itertools.pairwise(windows))  # neighbouring heads with one window share tensors
    assert len({name.split(".")[0] for name in state.tensors}) == runs
    for name, tensor in state.tensors.items():
        torch.testing.assert_close(tensor, stepped.tensors[name], rtol=1e-5, atol=1e-5, msg=name)


def test_head_windows_gradients_reach_every_head_and_match_definition():
    """Training goes through views of the feature maps' parameters, one group of heads at a time."""
    windows = (3, 8, 8, 1)
    attention = make_attention(8, 4, 16, 2, windows, seed=6, horizon=10.0).double()
    q, k, v = (x.requires_grad_() for x in random_qkv(1, 8, 4, 40, 16, dtype=torch.float64))
    attention(q, k, v).pow(2).sum().backward()
    fast = [x.grad.clone() for x in (q, k, v)] + [p.grad.clone() for p in attention.parameters()]
    for x in (q, k, v, *attention.parameters()):
        x.grad = None
    features_q, features_k = attention.feature_map_q(q), attention.feature_map_k(k)
    naive_hybrid_attention(q, k, v, features_q, features_k, attention.log_weight, 2, windows,
                           decay=attention.log_decay.exp()).pow(2).sum().backward()
    slow = [x.grad for x in (q, k, v)] + [p.grad for p in attention.parameters()]
    for got, expected in zip(fast, slow, strict=True):
        assert relative_rms(got, expected) < 1e-9
    assert all(bool((p.grad.reshape(p.shape[0], -1).abs().sum(1) > 0).all()) for p in attention.parameters())


def test_head_window_errors():
    with pytest.raises(ValueError, match="one window per key/value head"):
        HybridAttention(4, 2, 16, window=(8, 8, 8))
    with pytest.raises(ValueError, match="window >= 1"):
        HybridAttention(4, 2, 16, window=(8, 0))
    assert HybridAttention(4, 2, 16, window=(8, 8)).spec.head_windows == ()  # equal windows: a plain layer
