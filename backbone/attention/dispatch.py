"""One place that chooses how linear attention is computed: Triton kernels or PyTorch.

`auto` takes Triton on CUDA for decoding steps and for single-sequence prefill, the Numba-compiled hybrid
step (backbone/kernels/cpu_step.py) for decoding on CPU, PyTorch's chunked path for batched prefill and
prefill on CPU, as measured on an H100 (bench/results/kernels_gpu.md): the
fused step is 1.8-2.4x faster than PyTorch's, the chunked kernel 2.2-3.4x faster at batch 1 (one
conversation) but 0.5x at batch 8 and 4k+ tokens, where PyTorch's batched products keep the GPU busier.
Training always takes PyTorch (the kernels are forward-only).
Either can be forced with `backend=` or the RILLET_ATTENTION_BACKEND environment variable; Triton on CPU
needs TRITON_INTERPRET=1 (tests only).
"""

from __future__ import annotations

import os

import torch

from backbone.attention.linear import (
    CHUNK_SIZE,
    LinearState,
    chunked_core,
    chunked_linear_attention,
    linear_attention_step,
)
from backbone.kernels import cpu_step

BACKENDS = ("auto", "torch", "triton", "numba")


def resolve_backend(backend: str, like: torch.Tensor, needs_grad: bool, *, step: bool = False) -> str:
    """'torch' or 'triton' for a computation on `like` (batch first) and its device; `step`: one decoding step."""
    if backend == "auto":
        backend = os.environ.get("RILLET_ATTENTION_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if like.is_cuda:
            return "triton" if not needs_grad and (step or like.shape[0] == 1) else "torch"
        return "numba" if step and not needs_grad and cpu_step.available() else "torch"
    if backend in ("triton", "numba") and needs_grad:
        raise ValueError(f"the {backend} kernels are forward-only; use backend='torch' where gradients are needed")
    if backend == "numba" and not cpu_step.available():
        raise ValueError("backend 'numba' needs the numba package (pip install numba)")
    return backend


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear_core(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    initial: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised chunked linear attention (see `linear.chunked_core`) on the chosen backend."""
    if resolve_backend(backend, q, _needs_grad(q, k, v, log_decay, initial)) == "triton":
        from backbone.kernels.linear_attention import chunked_core_triton

        out, final = chunked_core_triton(q, k, v, log_decay, initial, chunk_size)
        return out, final.to(q.dtype)
    return chunked_core(q, k, v, log_decay, initial, chunk_size)


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    decay: torch.Tensor | None = None,
    normalize: bool = True,
    initial_state: LinearState | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, LinearState]:
    """Causal linear attention over a sequence (prefill or training); returns (output, final state)."""
    state_tensors = (None, None) if initial_state is None else initial_state
    if resolve_backend(backend, q, _needs_grad(q, k, v, decay, *state_tensors)) == "triton":
        from backbone.kernels.linear_attention import chunked_linear_attention_triton

        return chunked_linear_attention_triton(q, k, v, decay=decay, normalize=normalize, initial_state=initial_state)
    return chunked_linear_attention(q, k, v, decay=decay, normalize=normalize, initial_state=initial_state)


def linear_decode_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: LinearState,
    *,
    decay: torch.Tensor | None = None,
    normalize: bool = True,
    backend: str = "auto",
) -> tuple[torch.Tensor, LinearState]:
    """One decoding step; the Triton path updates the state in place, the PyTorch path returns a new one."""
    if resolve_backend(backend, q, _needs_grad(q, k, v, *state), step=True) == "triton":
        from backbone.kernels.linear_attention import linear_attention_step_triton

        return linear_attention_step_triton(q, k, v, state, decay=decay, normalize=normalize)
    return linear_attention_step(q, k, v, state, decay=decay, normalize=normalize)
