"""The two training signals of the conversion.

Stage 1, attention transfer: the teacher runs once with its attention inputs captured; every student layer
sees exactly the teacher's post-RoPE q/k/v (teacher forcing) and is scored by the mean squared error of its
attention output (after o_proj) against the teacher's, so layers train independently and in parallel.
Stage 2, distillation: the whole student runs and matches the teacher's next-token distribution (KL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

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
                      chunk: int = 512):  # type: ignore[no-untyped-def]
    """A loss function for stage 2: KL(teacher || student) per token, plus the student's and the teacher's
    cross-entropy on the text as reported parts (not trained on).

    Vocabulary-sized tensors exist for `chunk` positions at a time: each chunk's logits are recomputed
    during backward (activation checkpointing), so a 4,096-token sequence holds ~0.5 GB of them instead
    of ~5 GB, for one more `lm_head` product per chunk."""

    def chunk_terms(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                    targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        student_logits, teacher_logits = student.lm_head(student_hidden), teacher.lm_head(teacher_hidden)
        kl = kl_divergence(student_logits, teacher_logits, temperature) * student_logits[..., 0].numel()
        scored = targets.shape[1]  # the last position of the sequence has no next token
        with torch.no_grad():
            ce = F.cross_entropy(student_logits[:, :scored].flatten(0, 1), targets.flatten(), reduction="sum")
            teacher_ce = F.cross_entropy(teacher_logits[:, :scored].flatten(0, 1), targets.flatten(),
                                         reduction="sum")
        return kl, ce, teacher_ce

    def loss_fn(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            teacher_hidden = teacher(batch, hidden_only=True)
        student_hidden = student(batch, hidden_only=True)
        kl_sum = torch.zeros((), device=batch.device)
        ce_sum = teacher_ce_sum = 0.0
        for start in range(0, batch.shape[1], chunk):
            end = min(start + chunk, batch.shape[1])
            kl, ce, teacher_ce = checkpoint(chunk_terms, student_hidden[:, start:end], teacher_hidden[:, start:end],
                                            batch[:, start + 1:end + 1], use_reentrant=False)
            kl_sum = kl_sum + kl
            ce_sum, teacher_ce_sum = ce_sum + float(ce), teacher_ce_sum + float(teacher_ce)
        scored = batch.shape[0] * (batch.shape[1] - 1)
        kl = kl_sum / batch.numel()
        return kl, {"kl": float(kl.detach()), "ce": ce_sum / scored, "teacher_ce": teacher_ce_sum / scored}

    return loss_fn


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over tokens of KL(p_teacher || p_student) at `temperature`."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1).flatten(0, -2)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1).flatten(0, -2)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * temperature**2
