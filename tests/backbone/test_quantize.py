"""Inference precisions (backbone/quantize.py) against float64 references, with error bounds derived from
how int8 and bfloat16 round, not from the code under test."""

from __future__ import annotations

import copy

import pytest
import torch

from backbone.quantize import (
    Bf16Linear,
    Int8Embedding,
    Int8Linear,
    PrecisionError,
    apply_precision,
    int8_supported,
    model_precision,
    resolve_precision,
)

needs_int8 = pytest.mark.skipif(not int8_supported(), reason="int8 needs fbgemm and a CPU with AVX2")


def int8_error_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Worst-case |y − x Wᵀ| (rows, out) when W is rounded to int8 per output row (error ≤ scale/2) and each
    row of x, divided by its largest magnitude, to 8-bit steps of at most 2/255 (one step: the zero point
    of an asymmetric grid is itself rounded)."""
    x, weight = x.double(), weight.double()
    weight_error = weight.abs().amax(1) / 127 / 2  # (out,)
    row_range = x.abs().amax(1, keepdim=True)  # (rows, 1)
    input_error = row_range * 2 / 255  # (rows, 1)
    return (x.abs().sum(1, keepdim=True) * weight_error + input_error * weight.abs().sum(1)
            + input_error * weight_error * x.shape[1]) * 1.001 + 1e-6


def random_rows(rows: int, features: int, generator: torch.Generator) -> torch.Tensor:
    """Activations as a prompt has them: most rows modest, one row a thousand times larger, and a few
    channels far larger than the rest."""
    x = torch.randn(rows, features, generator=generator)
    x[:, torch.randint(features, (max(1, features // 50),), generator=generator)] *= 30
    x[0] *= 1000
    return x


@needs_int8
@pytest.mark.parametrize(("rows", "features", "outputs"), [(1, 7, 1), (1, 576, 960), (3, 33, 5), (17, 577, 130)])
def test_int8_linear_stays_within_the_rounding_bound_of_every_row(rows, features, outputs):
    generator = torch.Generator().manual_seed(rows * 1000 + features)
    weight = torch.randn(outputs, features, generator=generator) * 0.05
    x = random_rows(rows, features, generator)
    exact = x.double() @ weight.double().T
    got = Int8Linear.from_float(weight)(x).double()
    assert got.shape == exact.shape
    assert ((got - exact).abs() <= int8_error_bound(x, weight)).all()
    # Typical error, row by row: a few per cent with these outlier channels (a scale shared by the rows
    # would leave the small rows' errors at the large row's step, many times their own size).
    rms = lambda t: t.pow(2).mean(1).sqrt()  # noqa: E731
    assert (rms(got - exact) < 0.1 * rms(exact)).all()


@needs_int8
def test_int8_linear_of_one_row_matches_the_same_row_in_a_batch():
    """A decoding step (one row) and a prompt (many rows) quantize each row on its own range."""
    generator = torch.Generator().manual_seed(7)
    weight = torch.randn(64, 96, generator=generator) * 0.05
    x = random_rows(9, 96, generator)
    linear = Int8Linear.from_float(weight)
    batch = linear(x)
    for i in range(x.shape[0]):
        alone = linear(x[i : i + 1])
        assert ((alone - batch[i]).abs().double() <= 2 * int8_error_bound(x[i : i + 1], weight)).all()


@needs_int8
def test_smoothed_int8_linear_computes_the_unsmoothed_product():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(40, 70, generator=generator) * 0.05
    x = random_rows(5, 70, generator)
    smooth = torch.rand(70, generator=generator) * 10 + 0.1
    got = Int8Linear.from_float(weight, smooth=smooth)(x).double()
    exact = x.double() @ weight.double().T
    # The rounding happens on x / s and W · s.
    assert ((got - exact).abs() <= int8_error_bound(x / smooth, weight * smooth)).all()


def test_int8_embedding_rows_round_to_half_a_step():
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(50, 24, generator=generator)
    from backbone.quantize import quantize_rows

    embedding = Int8Embedding(*quantize_rows(weight))
    ids = torch.tensor([[0, 49, 7, 7]])
    got = embedding(ids).double()
    step = weight.abs().amax(1).double() / 127
    assert ((got[0] - weight[ids[0]].double()).abs() <= step[ids[0], None] / 2 * 1.0001 + 1e-7).all()


@pytest.mark.parametrize(("rows", "features", "outputs"), [(1, 9, 4), (6, 130, 33)])
def test_bf16_linear_stays_within_bfloat16_rounding(rows, features, outputs):
    generator = torch.Generator().manual_seed(rows + features)
    weight = torch.randn(outputs, features, generator=generator)
    x = torch.randn(rows, features, generator=generator)
    exact = x.double() @ weight.double().T
    got = Bf16Linear(weight)(x).double()
    unit = 2.0**-8  # bfloat16 keeps 8 significant bits: relative rounding ≤ 2^-8 per value
    magnitude = x.double().abs() @ weight.double().abs().T
    assert ((got - exact).abs() <= magnitude * (2 * unit + unit**2) + exact.abs() * unit + 1e-6).all()


def test_precision_choice_and_refusals():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == ("int8" if int8_supported() else "fp32")
    with pytest.raises(PrecisionError, match="choose one of"):
        resolve_precision("int4", "cpu")
    with pytest.raises(PrecisionError, match="RILLET_PRECISION"):
        resolve_precision("int8", "cuda")


@needs_int8
def test_int8_teacher_keeps_the_float32_predictions(teacher, model_cache):
    """The whole model: next-token choices on real text agree with float32 nearly everywhere, and the loss
    moves by under 0.05 nats, through the prompt path and step by step (on 160 tokens the loss itself varies
    that much; bench/quantize.py reads the 2% quality bar on long held-out text)."""
    from backbone.loader import load_model

    quantized = load_model("teacher", cache_dir=model_cache, precision="int8")
    assert model_precision(quantized.model) == "int8"
    text = torch.__doc__ + "\n" + copy.__doc__
    ids = teacher.tokenizer.encode(text)[:160]
    with torch.inference_mode():
        exact = teacher.model(torch.tensor([ids]))[0]
        prompt = quantized.model(torch.tensor([ids]))[0]
        state = quantized.new_state()
        steps = torch.stack([quantized.step(token, state) for token in ids])

    def loss(logits: torch.Tensor) -> float:
        return torch.nn.functional.cross_entropy(logits[:-1].double(), torch.tensor(ids[1:])).item()

    for logits in (prompt, steps):
        assert (logits.argmax(-1) == exact.argmax(-1)).double().mean() > 0.9
        assert abs(loss(logits) - loss(exact)) < 0.05
    # Step by step equals the prompt path up to int8 rounding (each row quantized on its own range in both).
    assert (steps.argmax(-1) == prompt.argmax(-1)).double().mean() > 0.9


@needs_int8
def test_int8_student_step_equals_its_prefill(model_cache):
    """The int8 student's decoding step continues exactly what its prefill computes, up to int8 rounding."""
    from backbone.loader import load_model

    student = load_model("student", cache_dir=model_cache, precision="int8")
    ids = student.tokenizer.encode("def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n" * 8)[:150]
    with torch.inference_mode():
        prefilled = student.new_state()
        prompt_logits = student.prefill(ids, prefilled)
        stepped = student.new_state()
        for token in ids:
            step_logits = student.step(token, stepped)
    scale = prompt_logits.abs().max()
    assert (step_logits - prompt_logits).abs().max() < 0.05 * scale
    assert int(step_logits.argmax()) == int(prompt_logits.argmax())
    for name, tensor in prefilled.layers[0].tensors.items():
        other = stepped.layers[0].tensors[name]
        assert (tensor - other).abs().max() <= 0.05 * other.abs().max() + 1e-6, name


def test_apply_precision_refuses_twice_and_leaves_fp32_alone(teacher):
    model = copy.deepcopy(teacher.model)
    assert apply_precision(model, "fp32") is model and model_precision(model) == "fp32"
    apply_precision(model, "bf16")
    with pytest.raises(ValueError, match="already"):
        apply_precision(model, "bf16")
