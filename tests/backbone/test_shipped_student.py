"""Bounded checks on the real shipped student (teacher weights + backbone/checkpoints' trained file):
it reads a conversation through its state exactly as it reads it at once, its state does not grow,
and the trained parameters beat the same architecture untrained."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from backbone.evaluate import bucket_perplexity, perplexity, streaming_nll
from backbone.student import StudentConfig, build_student, load_student
from tests.backbone.attention_helpers import relative_rms
from tests.text import python_reference


@pytest.fixture(scope="module")
def student(teacher: Any) -> Any:
    return load_student(teacher)


@pytest.fixture(scope="module")
def prose_ids(teacher: Any) -> torch.Tensor:
    text = python_reference()[20_000:30_000]
    return torch.tensor(teacher.tokenizer.encode(text)[:512])


@pytest.mark.parametrize("splits", [[300], [1, 126, 1, 172], [70, 230]])
def test_prefill_in_pieces_then_steps_equals_one_forward(student: Any, prose_ids: torch.Tensor,
                                                         splits: list[int]) -> None:
    ids = prose_ids[: sum(splits) + 5][None]
    with torch.inference_mode():
        full = student.model(ids)
        state = student.new_state()
        pieces, start = [], 0
        for length in splits:
            pieces.append(student.model(ids[:, start:start + length], state))
            start += length
        pieces += [student.step(int(ids[0, position]), state)[None, None] for position in range(start, ids.shape[1])]
    incremental = torch.cat(pieces, dim=1)
    assert state.num_tokens == ids.shape[1]
    assert relative_rms(incremental, full) < 2e-3


def test_state_size_is_constant_and_under_10_mb(student: Any, prose_ids: torch.Tensor) -> None:
    empty = student.new_state().nbytes
    state = student.new_state()
    with torch.inference_mode():
        student.model(prose_ids[None], state)
    assert state.nbytes == empty < 10_000_000


def test_another_window_reads_the_same_parameters_with_its_own_exact_state(teacher: Any, student: Any) -> None:
    """The shipped file gives layers (and some heads) windows of their own; read with 64 everywhere, each
    head's ring holds 64 tokens and the state shrinks by exactly the window tokens dropped."""
    narrow = load_student(teacher, window="64")
    config = teacher.config
    per_head_token = 2 * config.head_dim * 4  # keys and values, float32
    windows = student.new_state().spec.layer_windows
    assert len(windows) == config.num_layers and len(set(windows)) > 1
    assert narrow.new_state().spec.layer_windows == () and narrow.new_state().spec.window == 64
    head_windows = [w for layer in windows for w in ((layer,) * config.num_kv_heads if isinstance(layer, int)
                                                     else layer)]
    dropped = sum(head_windows) - 64 * config.num_layers * config.num_kv_heads
    assert student.new_state().nbytes - narrow.new_state().nbytes == dropped * per_head_token


def test_trained_parameters_beat_the_untrained_hybrid(teacher: Any, student: Any, prose_ids: torch.Tensor) -> None:
    untrained = build_student(teacher.model, StudentConfig()).eval()
    trained_ppl = perplexity(student.model, prose_ids, 512)
    assert trained_ppl < perplexity(untrained, prose_ids, 512)
    assert trained_ppl < 2 * perplexity(teacher.model, prose_ids, 512)


def test_quality_holds_far_past_the_teachers_context(teacher: Any, student: Any) -> None:
    """14,336 tokens of the Python reference read through the student's state: its last 2,048 are predicted
    within 1.75x the perplexity of the teacher reading them with only the 2,048 tokens before them (its
    context holds no more than 8,192). Measured: 20.2 against 13.8 (1.47); the student reading the same
    4,096 tokens from an empty state gets 15.9."""
    ids = torch.tensor(teacher.tokenizer.encode(python_reference()[:120_000])[:14_336])
    with torch.inference_mode():
        losses, _ = streaming_nll(student, ids, chunk=2048)
        reference, _ = streaming_nll(teacher, ids[-4096:], chunk=2048)
    (_, _, late), = bucket_perplexity(losses, [12_288, 14_336])
    (_, _, teacher_late), = bucket_perplexity(reference, [2048, 4096])
    assert late < 1.75 * teacher_late, (late, teacher_late)
