"""Low-rank adapters (LoRA) for frozen linear layers: y = W x + (alpha / r) · B A x.

B starts at zero so a freshly wrapped layer computes exactly what the frozen one did; only A and B train.
`merge()` folds the update into W for inference, removing the extra matmuls from the decode loop.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable rank-`rank` update."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base
        self.base.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.merged = False

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def delta(self) -> torch.Tensor:
        return (self.lora_b @ self.lora_a) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Fold B A into the frozen weight (idempotent). A new tensor, so a weight shared with another
        model (the student shares the teacher's) is left as it was."""
        if not self.merged:
            merged = self.base.weight + self.delta().to(self.base.weight.dtype)
            self.base.weight = nn.Parameter(merged, requires_grad=False)
            self.merged = True


def wrap_linears(module: nn.Module, names: tuple[str, ...], rank: int, alpha: float) -> list[LoRALinear]:
    """Replace each child `nn.Linear` called one of `names` (at any depth) by a LoRA-wrapped copy."""
    wrapped = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if name in names and isinstance(child, nn.Linear):
                lora = LoRALinear(child, rank, alpha)
                setattr(parent, name, lora)
                wrapped.append(lora)
    return wrapped
