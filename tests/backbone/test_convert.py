"""The converter's training loop: exact resume, learning signal, and the data rules."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backbone.convert.checkpoint import load_checkpoint, moments_by_name
from backbone.convert.data import BatchSampler, Corpus
from backbone.convert.losses import attention_transfer_loss, distillation_loss, kl_divergence
from backbone.convert.train import Schedule, train
from backbone.student import StudentConfig, build_student, trainable_parameters
from tests.backbone.attention_helpers import relative_rms
from tests.backbone.test_student import perturb
from tests.backbone.test_teacher import TINY, tiny_model

CONFIG = StudentConfig(sinks=2, window=8)


def encode(text: str) -> list[int]:
    return [ord(c) % TINY.vocab_size for c in text]


def tiny_corpus(seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    streams = {name: rng.integers(0, TINY.vocab_size, 5000).astype(np.int32) for name in ("code", "prose", "verse")}
    texts = {"code": ["def f(x):\n    return x + 1\n" * 20], "prose": ["The river runs on and on. " * 40]}
    return Corpus(streams, texts)


def run(folder: Path, steps: int, stop_after: int | None = None, lora: int = 0,
        feature_dim: int | None = None, feature_lr_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Train a tiny student; `stop_after` ends the process early, as a kill or a time budget would."""
    teacher = tiny_model(seed=21)
    torch.manual_seed(0)
    student = build_student(teacher, dataclasses.replace(CONFIG, lora_rank=lora, feature_dim=feature_dim))
    params = trainable_parameters(student)
    loss = distillation_loss(teacher, student) if lora else attention_transfer_loss(teacher, student)
    sampler = BatchSampler(tiny_corpus(), encode, seq_len=40, batch_size=2, seed=3)
    schedule = Schedule(lr=1e-2, total_steps=steps, warmup_steps=2)
    progress = train("finetune" if lora else "transfer", params, loss, sampler, schedule, folder, log_every=1,
                     stop_step=stop_after, config={"steps": steps},
                     lr_scale=lambda name: feature_lr_scale if ".feature_map_" in name else 1.0)
    assert progress.step == (steps if stop_after is None else stop_after)
    return {k: v.detach().clone() for k, v in params.items()}


@pytest.mark.parametrize("lora", [0, 2])
def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, lora: int) -> None:
    straight = run(tmp_path / "a", steps=5, lora=lora)
    run(tmp_path / "b", steps=5, stop_after=2, lora=lora)
    resumed = run(tmp_path / "b", steps=5, lora=lora)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    _, _, progress = load_checkpoint(tmp_path / "b")
    assert progress.step == 5 and progress.tokens == 5 * 2 * 40 and len(progress.history) == 5


def test_a_run_with_parameter_groups_resumes_exactly_and_reads_old_checkpoints(tmp_path: Path) -> None:
    straight = run(tmp_path / "a", steps=5, lora=2, feature_lr_scale=3.0)
    run(tmp_path / "b", steps=5, stop_after=2, lora=2, feature_lr_scale=3.0)
    # A checkpoint written before parameter names were recorded: one group, in the parameters' order.
    run(tmp_path / "c", steps=5, stop_after=2, lora=2)
    saved = torch.load(tmp_path / "c" / "optimizer.pt", weights_only=True)
    named = moments_by_name(saved, [])
    assert len(saved["optimizer"]["param_groups"]) == 1
    del saved["names"]
    torch.save(saved, tmp_path / "c" / "optimizer.pt")
    assert moments_by_name(saved, list(named)).keys() == named.keys()
    for folder in ("b", "c"):
        resumed = run(tmp_path / folder, steps=5, lora=2, feature_lr_scale=3.0)
        assert straight.keys() == resumed.keys()
        if folder == "b":
            assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    regrouped = torch.load(tmp_path / "c" / "optimizer.pt", weights_only=True)
    assert len(regrouped["optimizer"]["param_groups"]) == 2
    assert all(int(m["step"]) == 5 for m in moments_by_name(regrouped, []).values())


def test_a_zero_scale_freezes_the_feature_maps(tmp_path: Path) -> None:
    before = run(tmp_path / "f", steps=4, stop_after=1, lora=2)
    after = run(tmp_path / "f", steps=4, lora=2, feature_lr_scale=0.0)
    for name in before:
        assert torch.equal(before[name], after[name]) == (".feature_map_" in name), name


def test_a_lengthened_run_continues_and_records_its_new_recipe(tmp_path: Path) -> None:
    run(tmp_path / "c", steps=3)
    run(tmp_path / "c", steps=5)
    _, _, progress = load_checkpoint(tmp_path / "c")
    assert progress.step == 5 and progress.config == {"steps": 5}
    changes = [entry for entry in progress.history if "changed" in entry]
    assert [(c["step"], c["tokens"], c["changed"]) for c in changes] == [(3, 3 * 2 * 40, {"steps": [3, 5]})]
    assert len(progress.history) == 5 + 1


def test_attention_transfer_lowers_the_loss(tmp_path: Path) -> None:
    teacher = tiny_model(seed=22)
    student = build_student(teacher, CONFIG)
    params = trainable_parameters(student)
    loss_fn = attention_transfer_loss(teacher, student)
    batch = BatchSampler(tiny_corpus(1), encode, seq_len=48, batch_size=2, seed=0).batch(0)
    with torch.no_grad():
        before = float(loss_fn(batch)[0])
    sampler = BatchSampler(tiny_corpus(1), encode, seq_len=48, batch_size=2, seed=0)
    train("transfer", params, loss_fn, sampler, Schedule(lr=2e-2, total_steps=30, warmup_steps=2), tmp_path / "t")
    with torch.no_grad():
        after = float(loss_fn(batch)[0])
    assert after < 0.8 * before


def test_kl_matches_float64_reference() -> None:
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    p = torch.softmax(teacher.double(), -1)
    expected = (p * (torch.log_softmax(teacher.double(), -1) - torch.log_softmax(student.double(), -1))).sum(-1)
    assert torch.allclose(kl_divergence(student, teacher).double(), expected.mean(), atol=1e-6)
    assert float(kl_divergence(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 7, 40, 512])
def test_chunked_distillation_equals_the_whole_sequence_loss(chunk: int) -> None:
    teacher = tiny_model(seed=22)
    student = build_student(teacher, dataclasses.replace(CONFIG, lora_rank=2))
    perturb(student, seed=chunk)  # an untrained student is nearly the teacher: a KL near 0 would test nothing
    params = trainable_parameters(student)
    batch = torch.randint(0, TINY.vocab_size, (2, 40))
    loss, parts = distillation_loss(teacher, student, chunk=chunk)(batch)
    assert float(loss.detach()) > 1e-3
    loss.backward()
    chunked_grads = {name: param.grad.clone() for name, param in params.items()}
    for param in params.values():
        param.grad = None
    student_logits = student(batch)
    with torch.no_grad():
        teacher_logits = teacher(batch)
    whole = kl_divergence(student_logits, teacher_logits)
    whole.backward()
    assert float(loss.detach()) == pytest.approx(float(whole.detach()), rel=1e-5)
    for name, param in params.items():
        assert relative_rms(chunked_grads[name], param.grad) < 1e-5, name
    expected_ce = F.cross_entropy(student_logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
    assert parts["ce"] == pytest.approx(float(expected_ce.detach()), rel=1e-5)
    expected_teacher_ce = F.cross_entropy(teacher_logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
    assert parts["teacher_ce"] == pytest.approx(float(expected_teacher_ce), rel=1e-5)


def test_batches_are_a_function_of_the_step() -> None:
    sampler = BatchSampler(tiny_corpus(), encode, seq_len=64, batch_size=3, seed=7)
    assert torch.equal(sampler.batch(4), sampler.batch(4))
    assert not torch.equal(sampler.batch(4), sampler.batch(5))
    assert sampler.batch(0).shape == (3, 64)


def test_evaluation_text_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="evaluation-only"):
        Corpus.build(encode, "t", tmp_path / "wikitext2_test", tmp_path)
