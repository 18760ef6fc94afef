"""Quality measurements shared by the benchmarks and the converter: perplexity over fixed windows, and
per-position loss over one long stream read through a model's state (how a conversation is read)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from backbone.generate import LanguageModel
from backbone.state import ModelState


@torch.inference_mode()
def perplexity(model: nn.Module, ids: torch.Tensor, context: int) -> float:
    """exp(mean next-token loss) over consecutive, non-overlapping windows of `context` tokens of `ids`
    (1-D); each window is read from scratch with a full-sequence forward."""
    usable = ids.numel() // context * context
    if usable == 0:
        raise ValueError(f"need at least {context} tokens, got {ids.numel()}")
    windows = ids[:usable].view(-1, context)
    total, count = 0.0, 0
    for window in windows:
        logits = model(window[None])
        total += float(F.cross_entropy(logits[0, :-1], window[1:], reduction="sum"))
        count += context - 1
    return math.exp(total / count)


@torch.inference_mode()
def streaming_nll(lm: LanguageModel, ids: torch.Tensor, chunk: int = 1024,
                  keep_states_at: Iterable[int] = ()) -> tuple[np.ndarray, dict[int, ModelState]]:
    """Next-token loss at every position of one long stream fed chunk by chunk through the model's state.

    Returns the losses (len(ids) − 1) and clones of the state after the positions in `keep_states_at`
    (chunk boundaries are placed there, so the clone holds exactly that many tokens)."""
    marks = sorted(set(keep_states_at))
    boundaries = sorted({*range(chunk, ids.numel(), chunk), *[m for m in marks if 0 < m < ids.numel()], ids.numel()})
    state = lm.new_state()
    losses, kept, start, previous_logit = [], {}, 0, None
    for end in tqdm(boundaries, desc="stream", unit="chunk", leave=False):
        piece = ids[start:end].to(lm.device)[None]
        logits = lm.model(piece, state)[0].float()
        if previous_logit is not None:
            losses.append(F.cross_entropy(previous_logit[None], piece[0, :1], reduction="none"))
        losses.append(F.cross_entropy(logits[:-1], piece[0, 1:], reduction="none"))
        previous_logit = logits[-1]
        if end in marks:
            kept[end] = state.clone()
        start = end
    return torch.cat(losses).cpu().numpy(), kept


def bucket_perplexity(losses: np.ndarray, edges: list[int]) -> list[tuple[int, int, float]]:
    """Perplexity of the losses between consecutive `edges` (positions of the predicted tokens)."""
    rows = []
    for lo, hi in pairwise(edges):
        part = losses[lo:hi]
        if part.size:
            rows.append((lo, hi, math.exp(float(part.mean()))))
    return rows
