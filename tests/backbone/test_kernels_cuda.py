"""The compiled Triton kernels and the student on a CUDA device, against float64 references on the CPU.

test_kernels.py runs the same kernels in Triton's interpreter, which checks their arithmetic but not what
the compiler makes of them (layouts, masking at block edges, several programs per key head). These tests
run only where PyTorch sees a CUDA device; everywhere else they are skipped with that reason.
"""

from __future__ import annotations

import pytest
import torch

from backbone.attention import LinearState, RecurrentState, naive_linear_attention
from backbone.attention.dispatch import linear_attention, linear_decode_step, resolve_backend
from backbone.convert.checkpoint import Progress, load_checkpoint, moments_by_name, restore_moments, save_checkpoint
from backbone.student import build_student, state_spec
from tests.backbone.attention_helpers import relative_rms
from tests.backbone.test_attention_hybrid import make_attention, random_qkv, reference
from tests.backbone.test_attention_linear import random_inputs
from tests.backbone.test_student import SMALL, perturb
from tests.backbone.test_teacher import TINY, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible to PyTorch)")
CUDA = torch.device("cuda")


@pytest.mark.parametrize(
    ("batch", "length", "head_dim", "heads", "kv_heads", "decayed", "normalize", "with_state"),
    [
        (1, 1, 64, 9, 3, False, True, False),
        (2, 63, 60, 4, 2, True, True, True),
        (1, 64, 64, 2, 2, True, False, False),
        (3, 65, 60, 3, 1, False, True, True),
        (1, 500, 64, 6, 3, True, True, True),
        (2, 4099, 128, 9, 3, True, True, True),
    ],
)
def test_compiled_chunked_and_step_match_reference(batch, length, head_dim, heads, kv_heads, decayed, normalize,
                                                   with_state):  # fmt: skip
    torch.manual_seed(1000 + length)
    q, k, v, state = random_inputs(batch, heads, kv_heads, length, head_dim, 64)
    decay = torch.linspace(0.9, 1.0, kv_heads) if decayed else None
    initial = state if with_state else None
    expected, expected_state = naive_linear_attention(
        q.double(), k.double(), v.double(), decay=None if decay is None else decay.double(), normalize=normalize,
        initial_state=None if initial is None else LinearState(initial.kv.double(), initial.k_sum.double()),
    )  # fmt: skip
    on_gpu = LinearState(state.kv.to(CUDA), state.k_sum.to(CUDA)) if with_state else None
    out, final = linear_attention(q.to(CUDA), k.to(CUDA), v.to(CUDA), decay=decay, normalize=normalize,
                                  initial_state=on_gpu, backend="triton")  # fmt: skip
    assert out.is_cuda and torch.isfinite(out).all()
    assert relative_rms(out.cpu(), expected) < 1e-5
    assert relative_rms(final.kv.cpu(), expected_state.kv) < 1e-5
    assert relative_rms(final.k_sum.cpu(), expected_state.k_sum) < 1e-5

    # the fused step continues the compiled prefill
    q1, k1, v1, _ = random_inputs(batch, heads, kv_heads, 1, head_dim, 64)
    step = LinearState(final.kv.clone(), final.k_sum.clone())
    out1, step = linear_decode_step(q1[:, :, 0].to(CUDA), k1[:, :, 0].to(CUDA), v1[:, :, 0].to(CUDA), step,
                                    decay=decay, normalize=normalize, backend="triton")  # fmt: skip
    whole, whole_state = naive_linear_attention(
        torch.cat([q, q1], 2).double(), torch.cat([k, k1], 2).double(), torch.cat([v, v1], 2).double(),
        decay=None if decay is None else decay.double(), normalize=normalize,
        initial_state=None if initial is None else LinearState(initial.kv.double(), initial.k_sum.double()),
    )  # fmt: skip
    assert relative_rms(out1.cpu(), whole[:, :, -1]) < 1e-5
    assert relative_rms(step.kv.cpu(), whole_state.kv) < 1e-5


@pytest.mark.parametrize("horizon", [None, 40.0])
def test_hybrid_attention_on_cuda_matches_reference(horizon):
    attention = make_attention(9, 3, 64, 4, 64, seed=21, horizon=horizon)
    q, k, v = random_qkv(2, 9, 3, 700, 64)
    sink_q = None if horizon is None else torch.randn_like(q)
    expected = reference(attention, q, k, v, sink_q)
    attention = attention.to(CUDA)
    with torch.no_grad():
        out = attention(q.to(CUDA), k.to(CUDA), v.to(CUDA), sink_q=None if sink_q is None else sink_q.to(CUDA))
    assert relative_rms(out.cpu(), expected) < 1e-4


@pytest.mark.parametrize("config", [SMALL, SMALL.with_window("16,1:40"), SMALL.with_window("16,0:40/5")],
                         ids=["one window", "layer windows", "head windows"])
def test_student_on_cuda_matches_cpu_float64(config):
    """Inference on CUDA (Triton linear part), prefill then decoding steps, against the float64 CPU student."""
    teacher = tiny_model(seed=31)
    student = build_student(teacher, config)
    perturb(student, 7)
    ids = torch.randint(0, TINY.vocab_size, (2, 150))
    with torch.no_grad():
        expected = student.double()(ids)
        student = student.float().to(CUDA)
        full = student(ids.to(CUDA))
        state = RecurrentState.empty(state_spec(student), batch=2, device=CUDA)
        pieces = [student(ids[:, :97].to(CUDA), state)]
        pieces += [student(ids[:, t:t + 1].to(CUDA), state) for t in range(97, 150)]
    assert relative_rms(full.cpu(), expected) < 1e-4
    assert relative_rms(torch.cat(pieces, 1).cpu(), expected) < 2e-3


def test_student_gradients_on_cuda_match_cpu_float64():
    """Training runs on CUDA through the PyTorch chunked path; its gradients equal the float64 CPU ones."""
    teacher = tiny_model(seed=32)
    student = build_student(teacher, SMALL)
    perturb(student, 8)
    ids = torch.randint(0, TINY.vocab_size, (2, 130))

    def gradients(model, batch):
        model.zero_grad(set_to_none=True)
        model(batch).logsumexp(-1).mean().backward()
        return {n: p.grad.detach().double().cpu() for n, p in model.named_parameters() if p.grad is not None}

    expected = gradients(student.double(), ids)
    actual = gradients(student.float().to(CUDA), ids.to(CUDA))
    assert expected.keys() == actual.keys() and expected
    for name in expected:
        assert relative_rms(actual[name], expected[name]) < 1e-4, name


def test_auto_backend_on_cuda_follows_the_measurements(monkeypatch):
    """As measured in bench/results/kernels_gpu.md: Triton for steps and one-sequence prefill, not for batches."""
    monkeypatch.delenv("RILLET_ATTENTION_BACKEND", raising=False)
    one, batch = torch.zeros(1, 9, 64, 128, device=CUDA), torch.zeros(8, 9, 64, 128, device=CUDA)
    assert resolve_backend("auto", one, needs_grad=False) == "triton"
    assert resolve_backend("auto", batch, needs_grad=False, step=True) == "triton"
    assert resolve_backend("auto", batch, needs_grad=False) == "torch"
    assert resolve_backend("auto", one, needs_grad=True) == "torch"


def test_a_checkpoint_written_on_cuda_resumes_on_the_cpu(tmp_path):
    """The converter's checkpoints move between machines: moments saved from CUDA load into a CPU optimizer."""
    torch.manual_seed(5)
    on_gpu = {name: torch.nn.Parameter(torch.randn(shape, device=CUDA)) for name, shape in (("a", (4, 3)), ("b", (5,)))}
    optimizer = torch.optim.AdamW(on_gpu.values())
    sum(p.pow(2).sum() for p in on_gpu.values()).backward()
    optimizer.step()
    save_checkpoint(tmp_path / "stage", on_gpu, optimizer, Progress(stage="finetune", step=1))

    saved, opt_state, progress = load_checkpoint(tmp_path / "stage")
    on_cpu = {name: torch.nn.Parameter(value) for name, value in saved.items()}
    cpu_optimizer = torch.optim.AdamW(on_cpu.values())
    restore_moments(cpu_optimizer, on_cpu, moments_by_name(opt_state, list(on_cpu)))
    assert progress.step == 1
    for name, param in on_cpu.items():
        assert param.device.type == "cpu" and torch.equal(param, on_gpu[name].detach().cpu())
        restored, original = cpu_optimizer.state[param], optimizer.state[on_gpu[name]]
        assert restored["exp_avg"].device.type == "cpu"
        assert torch.equal(restored["exp_avg_sq"], original["exp_avg_sq"].cpu())
