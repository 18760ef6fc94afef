"""What every model state shares, so sessions can persist the teacher's KV cache and the student's
recurrent state alike.

A state is a set of named tensors plus a little metadata (token count, layout). `memory/` stores it
through `to_tensors`/`metadata` and rebuilds it with the model's `state_from_tensors`; it never needs to
know which kind of model made it.
"""

from __future__ import annotations

from typing import Protocol, Self, runtime_checkable

import torch


@runtime_checkable
class ModelState(Protocol):
    """The per-conversation memory of a model (KV cache for softmax, recurrent state for linear)."""

    @property
    def num_tokens(self) -> int:
        """Tokens consumed so far."""
        ...

    @property
    def nbytes(self) -> int:
        """Bytes held by the state's tensors."""
        ...

    def clone(self) -> Self:
        """An independent copy: feeding one never changes the other."""
        ...

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Self: ...

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Contiguous CPU tensors that, with `metadata()`, rebuild the state exactly."""
        ...

    def metadata(self) -> dict[str, str]:
        """String metadata (kind, token count, layout) stored beside the tensors."""
        ...
