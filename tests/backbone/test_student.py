"""The student: hybrid attention swapped into the teacher. Checked against the teacher where they must
agree, against itself across the full-sequence / prefill / step forms, and through its parameter file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from backbone.attention import RecurrentState
from backbone.loader import wrap_teacher
from backbone.lora import LoRALinear
from backbone.student import (
    StudentConfig,
    build_student,
    load_student,
    save_student,
    state_spec,
    trainable_parameters,
)
from tests.backbone.attention_helpers import relative_rms
from tests.backbone.test_teacher import TINY, tiny_model

SMALL = StudentConfig(sinks=2, window=16, sink_distance=40, decay_horizon=30.0)  # both active past 40 tokens


def perturb(student: torch.nn.Module, seed: int) -> None:
    """Move the trainable parameters off their initial values so every term is exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in trainable_parameters(student).values():
            param.add_(torch.randn(param.shape, generator=generator) * 0.3)


def test_student_equals_teacher_while_everything_fits_the_window() -> None:
    teacher = tiny_model(seed=11)
    student = build_student(teacher, StudentConfig(sinks=4, window=64))
    perturb(student, 0)
    ids = torch.randint(0, TINY.vocab_size, (2, 64))
    with torch.no_grad():
        assert relative_rms(student(ids), teacher(ids)) < 1e-5


def test_student_differs_from_teacher_beyond_the_window() -> None:
    teacher = tiny_model(seed=12)
    student = build_student(teacher, SMALL)
    ids = torch.randint(0, TINY.vocab_size, (1, 80))
    with torch.no_grad():
        assert relative_rms(student(ids)[:, 20:], teacher(ids)[:, 20:]) > 1e-3


@pytest.mark.parametrize("splits", [[1], [63, 1, 1], [100, 37, 13], [17, 150]])
@pytest.mark.parametrize("config", [SMALL, SMALL.with_window("16,1:40"), SMALL.with_window("16,0:40/5")],
                         ids=["one window", "layer windows", "head windows"])
def test_full_forward_equals_prefill_then_steps(splits: list[int], config: StudentConfig) -> None:
    teacher = tiny_model(seed=13)
    student = build_student(teacher, config)
    perturb(student, 1)
    ids = torch.randint(0, TINY.vocab_size, (1, sum(splits)))
    spec = state_spec(student)
    with torch.no_grad():
        full = student(ids)
        state = RecurrentState.empty(spec)
        pieces, start = [], 0
        for length in splits:
            pieces.append(student(ids[:, start:start + length], state))
            start += length
        incremental = torch.cat(pieces, dim=1)
    assert state.num_tokens == ids.shape[1]
    assert relative_rms(incremental, full) < 2e-3


def test_a_layer_window_changes_that_layer_only_and_sizes_its_state() -> None:
    """Layer 1 with its own window 40: layer 0 reads exactly as in the uniform student; layer 1 as in a
    uniform student of window 40; the state holds 24 more exact tokens in layer 1 alone."""
    teacher = tiny_model(seed=18)
    uniform, wide = build_student(teacher, SMALL), build_student(teacher, SMALL.with_window("40"))
    mixed = build_student(teacher, SMALL.with_window("16,1:40"))
    perturb(uniform, 5)
    for model in (wide, mixed):
        model.load_state_dict(uniform.state_dict())
    x = torch.randn(1, 90, TINY.dim)
    rope = teacher.rope(0, 90, torch.float32)
    with torch.no_grad():
        for layer, reference in ((0, uniform), (1, wide)):
            expected = reference.layers[layer].attention(x, rope)
            assert torch.equal(mixed.layers[layer].attention(x, rope), expected)
        assert relative_rms(mixed.layers[1].attention(x, rope), uniform.layers[1].attention(x, rope)) > 1e-3
    spec = state_spec(mixed)
    assert spec.layer_windows == (16, 40) and spec.window == 40
    assert state_spec(uniform).layer_windows == ()
    per_token = 2 * TINY.num_kv_heads * TINY.head_dim * 4
    assert RecurrentState.empty(spec).nbytes - RecurrentState.empty(state_spec(uniform)).nbytes == 24 * per_token


@pytest.mark.parametrize(("text", "window", "overrides"), [
    ("128", 128, ()), ("64,17:512,3:1024", 64, ((3, 1024), (17, 512))), (" 8 , 1:40 ", 8, ((1, 40),)),
    ("72,20:1024/128/512,4:32", 72, ((4, 32), (20, (1024, 128, 512)))),
])
def test_window_specs_parse(text: str, window: int, overrides: tuple) -> None:
    config = StudentConfig().with_window(text)
    assert (config.window, config.window_overrides) == (window, overrides)
    assert StudentConfig.from_json(config.to_json()) == config
    assert StudentConfig().with_window(config.window_spec()) == config


def test_one_layer_window_replaced() -> None:
    config = StudentConfig().with_window("64,3:128,17:512").with_layer_window(17, (512, 32, 2048))
    assert config.window_overrides == ((3, 128), (17, (512, 32, 2048)))
    assert config.describe_window() == "64, layers 3: 128, layers 17: 512/32/2048"
    assert StudentConfig().with_window("64,3:128").with_layer_window(1, 8).layer_windows(4) == [64, 8, 64, 128]


@pytest.mark.parametrize("text", ["", "64,", "a", "64,128", "64,1:0", "64,1:8,1:16", "64,-1:8", "1:2:3", "8/16",
                                  "64,1:8/", "64,1:8/0", "64,1:8,1:8/16"])
def test_bad_window_specs_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="window"):
        StudentConfig().with_window(text)


def test_a_window_for_a_missing_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="model has 2 layers"):
        build_student(tiny_model(seed=19), SMALL.with_window("16,2:40"))
    with pytest.raises(ValueError, match="one window per key/value head"):
        build_student(tiny_model(seed=19), SMALL.with_window("16,1:40/8/8"))


def test_head_windows_change_those_heads_only_and_size_the_state() -> None:
    """Layer 0 with windows 40 and 5 for its two key/value heads: the first head's queries read as in a
    uniform student of window 40, the second's as in one of window 5; the state holds the exact tokens of each."""
    teacher = tiny_model(seed=20)
    mixed = build_student(teacher, SMALL.with_window("16,0:40/5"))
    perturb(mixed, 6)
    wide, narrow = build_student(teacher, SMALL.with_window("16,0:40")), build_student(teacher, SMALL.with_window("5"))
    for model in (wide, narrow):
        model.load_state_dict(mixed.state_dict())
    x = torch.randn(1, 90, TINY.dim)
    rope = teacher.rope(0, 90, torch.float32)
    captured = {}
    with torch.no_grad():
        for name, model in (("mixed", mixed), ("wide", wide), ("narrow", narrow)):
            model.layers[0].attention(x, rope, capture=captured.setdefault(name, {}))
    group = TINY.num_heads // TINY.num_kv_heads
    context = {name: c["context"] for name, c in captured.items()}
    torch.testing.assert_close(context["mixed"][:, :group], context["wide"][:, :group])
    torch.testing.assert_close(context["mixed"][:, group:], context["narrow"][:, group:])
    assert relative_rms(context["wide"][:, group:], context["narrow"][:, group:]) > 1e-3
    spec = state_spec(mixed)
    assert spec.layer_windows == ((40, 5), 16) and spec.window == 40
    per_head_token = 2 * TINY.head_dim * 4
    expected = RecurrentState.empty(state_spec(wide)).nbytes - 35 * per_head_token
    assert RecurrentState.empty(spec).nbytes == expected


def test_student_shares_teacher_weights_and_leaves_the_teacher_intact() -> None:
    teacher = tiny_model(seed=14)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_student(teacher, dataclasses.replace(SMALL, lora_rank=2))
    perturb(student, 2)
    for module in student.modules():
        if isinstance(module, LoRALinear):
            module.merge()
    assert student.layers[0].mlp.up_proj.weight.data_ptr() == teacher.layers[0].mlp.up_proj.weight.data_ptr()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_lora_merge_keeps_the_outputs() -> None:
    student = build_student(tiny_model(seed=15), dataclasses.replace(SMALL, lora_rank=4))
    perturb(student, 3)
    ids = torch.randint(0, TINY.vocab_size, (1, 40))
    with torch.no_grad():
        unmerged = student(ids)
        for module in student.modules():
            if isinstance(module, LoRALinear):
                module.merge()
        assert relative_rms(student(ids), unmerged) < 1e-5


def test_only_new_parameters_train() -> None:
    student = build_student(tiny_model(seed=16), dataclasses.replace(SMALL, lora_rank=2))
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == set(trainable_parameters(student))
    assert all(".hybrid." in n or ".lora_" in n for n in trainable)
    assert any(".lora_" in n for n in trainable) and any("feature_map" in n for n in trainable)


def test_parameter_file_round_trip_and_checks(tmp_path: Path) -> None:
    teacher = wrap_teacher(tiny_model(seed=17), tokenizer=None, fingerprint="teacher-a")  # type: ignore[arg-type]
    config = dataclasses.replace(SMALL, lora_rank=2)
    trained = build_student(teacher.model, config)
    perturb(trained, 4)
    path = tmp_path / "student.safetensors"
    digest = save_student(path, trained, config, "teacher-a")
    path.with_suffix(".json").write_text(json.dumps({"sha256": digest}))

    loaded = load_student(teacher, path)
    ids = torch.randint(0, TINY.vocab_size, (1, 50))
    with torch.no_grad():
        expected = trained(ids)
        state = loaded.new_state()
        assert isinstance(state, RecurrentState)
        assert relative_rms(loaded.model(ids, state), expected) < 2e-3
    assert loaded.max_context is None and loaded.fingerprint != teacher.fingerprint

    other = wrap_teacher(tiny_model(seed=17), tokenizer=None, fingerprint="teacher-b")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="another teacher"):
        load_student(other, path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged or was replaced"):
        load_student(teacher, path)
    with pytest.raises(FileNotFoundError, match="rillet convert"):
        load_student(teacher, tmp_path / "missing.safetensors")


def test_capped_rope_holds_positions_past_the_limit() -> None:
    model = tiny_model(seed=16)
    rope = model.rope(10, 50, torch.float32).capped(30)
    inv_freq = 1.0 / TINY.rope_theta ** (torch.arange(0, TINY.head_dim, 2, dtype=torch.float64) / TINY.head_dim)
    positions = torch.arange(10, 60, dtype=torch.float64).clamp(max=30)
    angles = torch.outer(positions, inv_freq).repeat(1, 2)
    torch.testing.assert_close(rope.cos, angles.cos().float())
    torch.testing.assert_close(rope.sin, angles.sin().float())


def test_sink_distance_and_decay_change_only_what_they_should() -> None:
    """Up to `sink_distance` the cap changes nothing; past it the output moves. Decay moves the output as soon
    as a second key has joined the linear sums (position sinks + window + 1)."""
    teacher = tiny_model(seed=17)
    ids = torch.randint(0, TINY.vocab_size, (1, 90))
    outputs = {}
    for name, config in (("plain", StudentConfig(sinks=2, window=16, sink_distance=None, decay_horizon=None)),
                         ("capped", StudentConfig(sinks=2, window=16, sink_distance=40, decay_horizon=None)),
                         ("decayed", StudentConfig(sinks=2, window=16, sink_distance=None, decay_horizon=30.0))):
        student = build_student(teacher, config)
        perturb(student, 5)
        with torch.no_grad():
            outputs[name] = student(ids)[0]
    plain, capped, decayed = outputs["plain"], outputs["capped"], outputs["decayed"]
    torch.testing.assert_close(capped[:41], plain[:41])
    assert relative_rms(capped[41:], plain[41:]) > 1e-3
    torch.testing.assert_close(decayed[:19], plain[:19])
    assert relative_rms(decayed[19:], plain[19:]) > 1e-3
