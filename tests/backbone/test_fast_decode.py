"""The compiled CPU decoding step (backbone/kernels/, backbone/fast_decode.py) against float64 references:
its products, its norm, its attention step, and a whole int8 student built from random weights."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from backbone.attention.state import RecurrentState
from backbone.kernels import cpu_step
from backbone.quantize import Int8Embedding, Int8Linear, apply_precision, int8_supported
from backbone.student import StudentConfig, build_student, state_spec
from tests.backbone.attention_helpers import relative_rms
from tests.backbone.test_attention_hybrid import make_attention, random_qkv
from tests.backbone.test_teacher import TINY, tiny_model

pytestmark = pytest.mark.skipif(not cpu_step.available(), reason="the compiled step needs numba")


@pytest.mark.parametrize(("rows", "columns"), [(1, 1), (37, 53), (130, 576), (3, 1536)])
def test_int8_matvec_matches_float64(rows, columns):
    from backbone.kernels.cpu_step import int8_matvec

    generator = np.random.default_rng(rows * columns)
    weight = generator.integers(-127, 128, (rows, columns), dtype=np.int8)
    scale = generator.random(rows, dtype=np.float32) + 0.01
    x = (generator.standard_normal(columns) * 10).astype(np.float32)
    out = np.empty(rows, np.float32)
    int8_matvec(x, weight, scale, out)
    exact = (weight.astype(np.float64) * scale[:, None].astype(np.float64)) @ x.astype(np.float64)
    # float32 accumulation of `columns` products: relative error of order columns · 2^-24 of Σ|terms|
    bound = (np.abs(weight) * scale[:, None] @ np.abs(x)) * columns * 2.0**-23 + 1e-30
    assert (np.abs(out - exact) <= bound).all()


def test_rms_norm_matches_float64():
    from backbone.kernels.cpu_step import rms_norm

    generator = np.random.default_rng(3)
    x = (generator.standard_normal(577) * 50).astype(np.float32)
    weight = generator.random(577, dtype=np.float32) * 2
    out = np.empty_like(x)
    rms_norm(x, weight, 1e-5, out)
    x64 = x.astype(np.float64)
    exact = x64 / np.sqrt((x64**2).mean() + 1e-5) * weight
    np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("window", "per_query", "horizon"), [(8, False, None), ((4, 16, 4), False, 20.0),
                                                              (5, True, 30.0), (1, False, 5.0)])
def test_kernel_steps_equal_the_pytorch_steps(window, per_query, horizon):
    """Same inputs, same state, token after token: outputs and states agree to float32 rounding, through the
    warm-up, the window filling and keys joining the (decayed) linear sums; with sink queries of their own."""
    compiled = make_attention(9, 3, 16, 4, window, per_query, seed=5, horizon=horizon)
    reference = make_attention(9, 3, 16, 4, window, per_query, seed=5, horizon=horizon)
    reference.backend = "torch"
    length = 4 + 3 * max(window if isinstance(window, int) else max(window), 4) + 7
    q, k, v = random_qkv(1, 9, 3, length, 16, scale=3.0)
    sink_q = q.flip(2)
    states = compiled.new_state(), reference.new_state()
    with torch.no_grad():
        for t in range(length):
            inputs = (q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1])
            sink = sink_q[:, :, t : t + 1] if t % 3 else None
            got = compiled(*inputs, states[0], sink_q=sink)
            expected = reference(*inputs, states[1], sink_q=sink)
            assert relative_rms(got, expected) < 1e-5, t
    for name, tensor in states[1].tensors.items():
        assert relative_rms(states[0].tensors[name], tensor) < 1e-5, name
    assert states[0].num_tokens == states[1].num_tokens == length


def test_the_kernel_rotates_what_it_is_given():
    """Handing the kernel unrotated q and k with cos/sin gives what rotating them first gives."""
    from backbone.model import Rope, rope_tables

    attention = make_attention(6, 2, 8, 2, 4, seed=9, horizon=10.0)
    reference = make_attention(6, 2, 8, 2, 4, seed=9, horizon=10.0)
    reference.backend = "torch"
    cos_table, sin_table = rope_tables(8, 64, 10_000.0)
    q, k, v = random_qkv(1, 6, 2, 20, 8)
    rotated_state, unrotated_state = reference.new_state(), attention.new_state()
    with torch.no_grad():
        for t in range(20):
            rope = Rope(cos_table[t : t + 1], sin_table[t : t + 1], t)
            qt, kt, vt = q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1]
            expected = reference(rope.apply(qt), rope.apply(kt), vt, rotated_state)
            got = attention.kernel_step(qt, kt, vt, (cos_table[t], sin_table[t]), None, None, unrotated_state)
            assert relative_rms(got, expected) < 1e-5, t


def dequantized(model: nn.Module) -> nn.Module:
    """The float64 model that the int8 tables stand for: every int8 product as a plain linear with the
    weight W_int8 · scale / smooth, the embedding as its rows times their scales."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Int8Linear):
                weight = child.weight_int8.double() * child.scale.double()[:, None]
                if child.inverse_smooth is not None:
                    weight = weight * child.inverse_smooth.double()[None, :]
                linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.float64)
                linear.weight.data = weight
                setattr(module, child_name, linear)
            elif isinstance(child, Int8Embedding):
                table = child.weight_int8.double() * child.scale.double()[:, None]
                setattr(module, child_name, nn.Embedding.from_pretrained(table))
    return model.double()


@pytest.mark.skipif(not int8_supported(), reason="int8 tables need fbgemm and a CPU with AVX2")
def test_compiled_student_step_equals_the_float64_model_of_its_int8_weights():
    """A whole random int8 student (per-head windows, sinks scored at a capped distance, decay): token by
    token from an empty state, the compiled step's logits equal the float64 model with the same int8
    weights, run by the PyTorch path."""
    import copy

    from backbone.fast_decode import CompiledStudentStep, supports

    config = dataclasses.replace(StudentConfig(sinks=2, window=6, sink_distance=30, decay_horizon=12.0),
                                 window_overrides=((1, (3, 9)),))
    student = build_student(tiny_model(TINY, seed=21), config)
    with torch.no_grad():
        for name, param in student.named_parameters():
            if ".hybrid." in name:
                param.normal_(0, 0.5)
    ids = torch.randint(0, TINY.vocab_size, (1, 60), generator=torch.Generator().manual_seed(4))
    apply_precision(student, "int8", calibration_ids=ids)
    assert supports(student)
    reference = dequantized(copy.deepcopy(student))
    for layer in reference.layers:
        layer.attention.hybrid.backend = "torch"
    step = CompiledStudentStep(student)
    spec = state_spec(student)
    state, reference_state = RecurrentState.empty(spec), RecurrentState.empty(spec, dtype=torch.float64)
    with torch.inference_mode():
        for t, token in enumerate(ids[0].tolist()):
            got = step(token, state)
            expected = reference(torch.tensor([[token]]), reference_state, last_only=True)[0, -1]
            assert relative_rms(got.double(), expected) < 1e-5, t
    assert state.num_tokens == reference_state.num_tokens == 60
