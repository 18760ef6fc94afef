"""RecurrentState: the ModelState protocol, exact byte round-trip, independence of clones, refusals."""

import dataclasses

import pytest
import torch

from backbone.attention import HybridAttention, RecurrentState, StateSpec
from backbone.state import ModelState

SPEC = StateSpec("hybrid", num_layers=3, kv_heads=2, state_heads=2, head_dim=16, feature_dim=32, sinks=2, window=8)


def filled_state(dtype=torch.float32) -> RecurrentState:
    """A state that has read 37 tokens through real hybrid attention layers."""
    torch.manual_seed(0)
    attention = HybridAttention(4, 2, 16, sinks=2, window=8, feature_dim=32)
    state = RecurrentState.empty(SPEC, dtype=dtype)
    q, k, v = torch.randn(1, 4, 37, 16), torch.randn(1, 2, 37, 16), torch.randn(1, 2, 37, 16)
    with torch.no_grad():
        for layer in state.layers:
            attention(q.to(dtype), k.to(dtype), v.to(dtype), layer)
    return state


def test_implements_model_state_protocol():
    state = filled_state()
    assert isinstance(state, ModelState)
    assert state.num_tokens == 37
    assert state.nbytes == sum(t.numel() * 4 for t in state.to_tensors().values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bytes_round_trip_exactly(dtype):
    state = filled_state(dtype)
    restored = RecurrentState.from_bytes(state.to_bytes(), spec=SPEC)
    assert restored.num_tokens == 37 and restored.spec == SPEC
    original, copy = state.to_tensors(), restored.to_tensors()
    assert original.keys() == copy.keys()
    for name in original:
        assert copy[name].dtype == dtype
        assert torch.equal(original[name].view(torch.uint8), copy[name].view(torch.uint8)), name


def test_clone_is_independent_and_to_converts():
    state = filled_state()
    copy = state.clone()
    attention = HybridAttention(4, 2, 16, sinks=2, window=8, feature_dim=32)
    with torch.no_grad():
        attention(torch.randn(1, 4, 1, 16), torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16), copy.layers[0])
    assert copy.layers[0].num_tokens == 38 and state.layers[0].num_tokens == 37
    assert not torch.equal(copy.layers[0].tensors["exact_k"], state.layers[0].tensors["exact_k"])
    half = state.to(dtype=torch.float16)
    assert half.nbytes == state.nbytes // 2 and half.num_tokens == 37


def test_foreign_or_damaged_states_are_refused():
    data = filled_state().to_bytes()
    with pytest.raises(ValueError, match="another configuration"):
        RecurrentState.from_bytes(data, spec=dataclasses.replace(SPEC, window=16))
    tensors, metadata = filled_state().to_tensors(), filled_state().metadata()
    del tensors["layers.1.kv"]
    with pytest.raises(ValueError, match="missing"):
        RecurrentState.from_tensors(tensors, metadata)
    with pytest.raises(ValueError, match="not a recurrent state"):
        RecurrentState.from_tensors({}, {"kind": "kv_cache"})
    tensors = filled_state().to_tensors()
    tensors["layers.0.exact_k"] = tensors["layers.0.exact_k"][:, :, :4].contiguous()
    with pytest.raises(ValueError, match="another model configuration"):
        RecurrentState.from_tensors(tensors, metadata)


def test_layers_with_windows_of_their_own_round_trip_and_are_checked():
    mixed = dataclasses.replace(SPEC, window=12, layer_windows=(8, 12, 8))
    state = RecurrentState.empty(mixed)
    assert [layer.tensors["exact_k"].shape[2] for layer in state.layers] == [2 + 8, 2 + 12, 2 + 8]
    for layer in state.layers:
        for tensor in layer.tensors.values():
            tensor.normal_()
    data = state.to_bytes()
    restored = RecurrentState.from_bytes(data, spec=mixed)
    assert restored.spec == mixed
    assert all(torch.equal(restored.to_tensors()[n], t) for n, t in state.to_tensors().items())
    with pytest.raises(ValueError, match="another configuration"):
        RecurrentState.from_bytes(data, spec=dataclasses.replace(mixed, layer_windows=(12, 8, 8)))
    with pytest.raises(ValueError, match="another configuration"):
        RecurrentState.from_bytes(data, spec=dataclasses.replace(SPEC, window=12))
    assert "spec.layer_windows" not in filled_state().metadata()  # uniform states keep their old metadata
    with pytest.raises(ValueError, match="one window per layer"):
        dataclasses.replace(mixed, layer_windows=(8, 12))
    with pytest.raises(ValueError, match="widest"):
        dataclasses.replace(mixed, window=8)
    with pytest.raises(ValueError, match=r"layer\(i\)"):
        mixed.layer_shapes(1)


def test_layers_with_windows_per_head_round_trip_and_are_checked():
    """Layer 0 with a window per key/value head (a group of tensors per head), layer 1 plain, layer 2 wide."""
    mixed = dataclasses.replace(SPEC, window=12, layer_windows=((3, 12), 8, 12))
    state = RecurrentState.empty(mixed)
    first = state.layers[0].tensors
    assert {name: tuple(t.shape) for name, t in first.items() if "exact_k" in name} == {
        "heads0-0.exact_k": (1, 1, 2 + 3, 16), "heads1-1.exact_k": (1, 1, 2 + 12, 16)}
    assert first["heads1-1.kv"].shape == (1, 1, 32, 16)
    plain = RecurrentState.empty(dataclasses.replace(SPEC, window=12, layer_windows=(12, 8, 12)))
    assert plain.nbytes - state.nbytes == 9 * 2 * 16 * 4  # 9 fewer exact tokens of k and v in one head
    for layer in state.layers:
        for tensor in layer.tensors.values():
            tensor.normal_()
    data = state.to_bytes()
    assert state.metadata()["spec.layer_windows"] == "3/12,8,12"
    restored = RecurrentState.from_bytes(data, spec=mixed)
    assert restored.spec == mixed
    assert all(torch.equal(restored.to_tensors()[n], t) for n, t in state.to_tensors().items())
    with pytest.raises(ValueError, match="another configuration"):
        RecurrentState.from_bytes(data, spec=dataclasses.replace(mixed, layer_windows=((12, 3), 8, 12)))
    with pytest.raises(ValueError, match="one window per key/value head"):
        dataclasses.replace(mixed, layer_windows=((3, 12, 12), 8, 12))
    with pytest.raises(ValueError, match="widest"):
        dataclasses.replace(mixed, layer_windows=((3, 16), 8, 12))
    with pytest.raises(ValueError, match="share one window"):
        mixed.layer(0).heads(0, 2)
