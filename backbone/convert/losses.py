"""The two training signals of the conversion.

Stage 1, attention transfer: the teacher runs once with its attention inputs captured; every student layer
sees exactly the teacher's post-RoPE q/k/v (teacher forcing) and is scored by the mean squared error of its
attention output (after o_proj) against the teacher's, so layers train independently and in parallel.
Stage 2, distillation: the whole student runs and matches the teacher's next-token distribution (KL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backbone.model import Transformer


def attention_transfer_loss(teacher: Transformer, student: Transformer):  # type: ignore[no-untyped-def]
    """A loss function (batch -> loss, parts) for stage 1."""

    def loss_fn(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        captured: list[dict[str, torch.Tensor]] = []
        with torch.no_grad():
            teacher(batch, capture=captured, last_only=True)
        losses = []
        for layer, seen in zip(student.layers, captured, strict=True):
            attention = layer.attention
            context = attention.hybrid(seen["q"], seen["k"], seen["v"])
            b, _, t, _ = context.shape
            out = attention.projections.o_proj(context.transpose(1, 2).reshape(b, t, -1))
            losses.append(F.mse_loss(out, seen["output"]))
        per_layer = torch.stack(losses)
        thirds = per_layer.detach().tensor_split(3)
        parts = {f"mse_layers_{i}": float(x.mean()) for i, x in enumerate(thirds)}
        return per_layer.sum(), parts

    return loss_fn


def distillation_loss(teacher: Transformer, student: Transformer, temperature: float = 1.0,
                      chunk: int = 256):  # type: ignore[no-untyped-def]
    """A loss function for stage 2: KL(teacher || student) per token, plus the student's cross-entropy
    on the text as a reported part (not trained on)."""

    def loss_fn(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            teacher_logits = teacher(batch)
        student_logits = student(batch)
        kl = kl_divergence(student_logits, teacher_logits, temperature)
        with torch.no_grad():
            ce = F.cross_entropy(student_logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
            teacher_ce = F.cross_entropy(teacher_logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
        return kl, {"kl": float(kl.detach()), "ce": float(ce), "teacher_ce": float(teacher_ce)}

    return loss_fn


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over tokens of KL(p_teacher || p_student) at `temperature`."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1).flatten(0, -2)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1).flatten(0, -2)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * temperature**2
