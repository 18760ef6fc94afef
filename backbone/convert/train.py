"""The conversion's training loop, shared by both stages: exact resume, time budget, progress bar.

The learning-rate schedule is a pure function of the step, batches are a pure function of the step,
and the optimizer state is checkpointed: stopping and resuming gives the run that never stopped.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from backbone.convert.checkpoint import (
    Progress,
    has_checkpoint,
    load_checkpoint,
    moments_by_name,
    restore_moments,
    save_checkpoint,
)
from backbone.convert.data import BatchSampler

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Schedule:
    """AdamW with linear warm-up and cosine decay to `final_fraction` of the peak rate."""

    lr: float
    total_steps: int
    warmup_steps: int = 20
    final_fraction: float = 0.1
    weight_decay: float = 0.0
    clip_norm: float = 1.0

    def rate(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.lr * (self.final_fraction + (1 - self.final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(stage: str, params: dict[str, nn.Parameter], loss_fn: LossFn, sampler: BatchSampler,
          schedule: Schedule, folder: Path, *, max_seconds: float = math.inf, checkpoint_seconds: float = 600,
          log_every: int = 10, config: dict | None = None, stop_step: int | None = None,
          lr_scale: Callable[[str], float] | None = None) -> Progress:
    """Train `params` on `loss_fn` until `schedule.total_steps` (or `stop_step`, or `max_seconds`),
    checkpointing into `folder`. `lr_scale(name)` multiplies the scheduled rate for that parameter."""
    device = next(iter(params.values())).device
    scales: dict[float, list[nn.Parameter]] = {}
    for name, param in params.items():
        scales.setdefault(1.0 if lr_scale is None else lr_scale(name), []).append(param)
    groups = [{"params": members, "lr_scale": scale} for scale, members in scales.items()]
    optimizer = torch.optim.AdamW(groups, lr=schedule.lr, weight_decay=schedule.weight_decay)
    progress = Progress(stage=stage, seed=sampler.seed, config=config or {})
    if has_checkpoint(folder):
        saved, opt_state, progress = load_checkpoint(folder)
        if progress.stage != stage:
            raise ValueError(f"{folder} holds a {progress.stage!r} checkpoint, not {stage!r}")
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value.to(device))
        if opt_state is not None:
            restore_moments(optimizer, params, moments_by_name(opt_state, list(params)))
        if config and config != progress.config:  # e.g. the run was lengthened with --steps
            changed = {key: [progress.config.get(key), value] for key, value in config.items()
                       if progress.config.get(key) != value}
            log.info("recipe changed on resume at step %d: %s", progress.step, changed)
            progress.history.append({"step": progress.step, "tokens": progress.tokens,
                                     "seconds": round(progress.seconds, 1), "changed": changed})
            progress.config = config
        log.info("resuming %s at step %d (%d tokens, %.0f s so far)", stage, progress.step, progress.tokens,
                 progress.seconds)
    started = time.monotonic()
    last_save, window_loss, window_n = started, 0.0, 0
    bar = tqdm(total=schedule.total_steps, initial=progress.step, desc=stage, unit="step", dynamic_ncols=True)
    main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _stop_on_sigterm) if main_thread else None
    try:
        last_step = schedule.total_steps if stop_step is None else min(stop_step, schedule.total_steps)
        while progress.step < last_step and time.monotonic() - started < max_seconds:
            step_started = time.monotonic()
            for group in optimizer.param_groups:
                group["lr"] = schedule.rate(progress.step) * group["lr_scale"]
            batch = sampler.batch(progress.step).to(device)
            loss, parts = loss_fn(batch)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params.values(), schedule.clip_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.tokens += batch.numel()
            progress.seconds += time.monotonic() - step_started
            window_loss += float(loss.detach())
            window_n += 1
            bar.update(1)
            rate = progress.tokens / max(progress.seconds, 1e-9)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", tok_s=f"{rate:.0f}")
            if progress.step % log_every == 0:
                entry = {"step": progress.step, "tokens": progress.tokens, "seconds": round(progress.seconds, 1),
                         "loss": window_loss / window_n, "grad_norm": grad_norm, **parts}
                progress.history.append(entry)
                log.info("%s step %d: %s", stage, progress.step, entry)
                window_loss, window_n = 0.0, 0
            if time.monotonic() - last_save > checkpoint_seconds:
                save_checkpoint(folder, dict(params), optimizer, progress)
                last_save = time.monotonic()
    finally:
        bar.close()
        save_checkpoint(folder, dict(params), optimizer, progress)
        if main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
    return progress


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """`kill` (SIGTERM) ends the run like Ctrl-C: the finally clause writes the checkpoint first."""
    raise KeyboardInterrupt(f"signal {signum}")
