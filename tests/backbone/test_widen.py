"""Widening the feature maps of a trained student: same function, and a checkpoint that trains on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from backbone.convert import run as convert
from backbone.convert.checkpoint import load_checkpoint
from backbone.convert.widen import widen_parameters, widening_factor
from backbone.student import StudentConfig, build_student, trainable_parameters
from tests.backbone.attention_helpers import relative_rms
from tests.backbone.test_convert import run as train_tiny
from tests.backbone.test_student import perturb
from tests.backbone.test_teacher import TINY, tiny_model

CONFIG = StudentConfig(sinks=2, window=8, lora_rank=2)  # a short window, so most keys go through the features


def logits_with(teacher: torch.nn.Module, config: StudentConfig, params: dict[str, torch.Tensor],
                ids: torch.Tensor) -> torch.Tensor:
    student = build_student(teacher, config)
    with torch.no_grad():
        for name, param in trainable_parameters(student).items():
            param.copy_(params[name])
        return student(ids)


@pytest.mark.parametrize(("factor", "length"), [(2, 63), (3, 1), (2, 130)])
def test_widening_without_noise_computes_the_same_logits(factor: int, length: int) -> None:
    teacher = tiny_model(seed=31)
    narrow = build_student(teacher, CONFIG)
    perturb(narrow, seed=factor + length)
    params = {n: p.detach().clone() for n, p in trainable_parameters(narrow).items()}
    ids = torch.randint(0, TINY.vocab_size, (2, length))
    wide_dim = factor * 2 * TINY.head_dim
    wide = widen_parameters(params, factor)
    expected = logits_with(teacher, CONFIG, params, ids)
    actual = logits_with(teacher, dataclasses.replace(CONFIG, feature_dim=wide_dim), wide, ids)
    assert relative_rms(actual, expected) < 1e-5
    # The linear part matters here: switching it off moves the logits far more than the tolerance.
    if length > CONFIG.window + CONFIG.sinks:
        silenced = {n: v - 1e4 if n.endswith(".log_weight") else v for n, v in params.items()}
        assert relative_rms(logits_with(teacher, CONFIG, silenced, ids), expected) > 1e-2


def test_noise_separates_the_copies_but_keeps_the_function_close() -> None:
    teacher = tiny_model(seed=32)
    narrow = build_student(teacher, CONFIG)
    perturb(narrow, seed=5)
    params = {n: p.detach().clone() for n, p in trainable_parameters(narrow).items()}
    wide = widen_parameters(params, 2, noise=0.05, seed=1)
    weight = wide["layers.0.attention.hybrid.feature_map_q.weight"]
    half = weight.shape[-1] // 2
    assert torch.equal(weight[..., :half], params["layers.0.attention.hybrid.feature_map_q.weight"])
    assert not torch.equal(weight[..., :half], weight[..., half:])
    ids = torch.randint(0, TINY.vocab_size, (1, 50))
    expected = logits_with(teacher, CONFIG, params, ids)
    actual = logits_with(teacher, dataclasses.replace(CONFIG, feature_dim=4 * TINY.head_dim), wide, ids)
    assert 0 < relative_rms(actual, expected) < 0.05


@pytest.mark.parametrize("new_dim", [16, 24, 17, 8])
def test_only_whole_factors_widen(new_dim: int) -> None:
    with pytest.raises(ValueError, match="whole factor"):
        widening_factor(16, new_dim)


def test_a_widened_checkpoint_computes_what_the_narrow_one_did_and_trains_on(tmp_path: Path) -> None:
    teacher = tiny_model(seed=21)
    train_tiny(tmp_path / "finetune", steps=4, stop_after=2, lora=2)
    narrow, _, _ = load_checkpoint(tmp_path / "finetune")
    record = convert.widen(teacher, tmp_path, 4 * TINY.head_dim, noise=0.0)
    assert (record["widened_from"], record["widened_to"], record["step"]) == (2 * TINY.head_dim, 4 * TINY.head_dim, 2)
    assert convert.trained_config(tmp_path / "finetune", "finetune").feature_dim == 4 * TINY.head_dim
    wide, opt_state, _ = load_checkpoint(tmp_path / "finetune")
    ids = torch.randint(0, TINY.vocab_size, (2, 40))
    wide_config = dataclasses.replace(CONFIG, feature_dim=4 * TINY.head_dim)
    assert relative_rms(logits_with(teacher, wide_config, wide, ids), logits_with(teacher, CONFIG, narrow, ids)) < 1e-5
    # Adam's moments grew with their parameters: both copies carry the narrow run's.
    widened = [s for s in opt_state["optimizer"]["state"].values() if s["exp_avg"].dim() == 3]
    assert widened and all(s["exp_avg_sq"].shape[-1] == 2 * TINY.head_dim for s in widened)
    for moments in widened:
        first, second = moments["exp_avg_sq"].chunk(2, dim=-1)
        assert torch.equal(first, second) and first.abs().sum() > 0

    trained = train_tiny(tmp_path / "finetune", steps=4, lora=2, feature_dim=4 * TINY.head_dim)
    _, _, progress = load_checkpoint(tmp_path / "finetune")
    assert progress.step == 4 and all(torch.isfinite(v).all() for v in trained.values())
    assert any(not torch.equal(trained[n], wide[n]) for n in wide)
