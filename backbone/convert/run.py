"""`rillet convert`: the two stages end to end, widening the feature maps, and exporting the shipped file.

Folders: `<out>/transfer` and `<out>/finetune` hold resumable checkpoints; `export` writes the
trained parameters (≤ 20 MB) with a manifest carrying their sha256 beside them. A checkpoint records its
student configuration, so a widened run resumes, exports and benchmarks at its own feature size and windows;
`window=` on a resumed run switches the softmax windows (they have no parameters) from that step on.
"""

from __future__ import annotations

import json
import logging
import math
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from backbone.attention.state import LayerWindow
from backbone.convert.checkpoint import (
    has_checkpoint,
    load_checkpoint,
    moments_by_name,
    read_progress,
    restore_moments,
    save_checkpoint,
)
from backbone.convert.data import BatchSampler, Corpus
from backbone.convert.losses import attention_transfer_loss, distillation_loss
from backbone.convert.train import Schedule, train
from backbone.convert.widen import widen_moments, widen_parameters, widening_factor
from backbone.generate import LanguageModel
from backbone.model import Transformer
from backbone.student import StudentConfig, build_student, save_student, trainable_parameters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageConfig:
    """One stage's recipe; recorded in its checkpoint."""

    stage: str
    steps: int
    lr: float
    seq_len: int
    batch_size: int
    seed: int = 0
    feature_lr_scale: float = 1.0  # the feature maps' rate over the schedule's (e.g. to train widened maps)


TRANSFER = StageConfig("transfer", steps=200, lr=1e-2, seq_len=1024, batch_size=2)
FINETUNE = StageConfig("finetune", steps=300, lr=1e-3, seq_len=1024, batch_size=2, seed=1)
LORA_RANK = 8


UNRECORDED_WINDOW = 64  # checkpoints that record no student configuration were trained with this window


def student_config(stage: str, feature_dim: int | None = None, window: int = StudentConfig.window,
                   window_overrides: tuple[tuple[int, LayerWindow], ...] = ()) -> StudentConfig:
    return StudentConfig(lora_rank=LORA_RANK if stage == "finetune" else 0, feature_dim=feature_dim, window=window,
                         window_overrides=window_overrides)


def trained_config(folder: Path, stage: str) -> StudentConfig:
    """The student a checkpoint was trained as: its recorded feature size (None: 2 × head_dim) and windows."""
    recorded = read_progress(folder).config.get("student", {})
    return student_config(stage, recorded.get("feature_dim"), recorded.get("window", UNRECORDED_WINDOW),
                          recorded.get("window_overrides", ()))


def newest_stage(out: Path) -> str:
    return "finetune" if has_checkpoint(out / "finetune") else "transfer"


def run_stage(teacher: LanguageModel, recipe: StageConfig, out: Path, shared_data: Path, cache_dir: Path,
              max_seconds: float = math.inf, checkpoint_seconds: float = 600, window: str | None = None) -> dict:
    """Run (or resume) one stage for at most `max_seconds`; returns its progress as a dict. `window`
    (default: the checkpoint's, or StudentConfig's for a new run) sets the softmax windows, in the form of
    `StudentConfig.with_window`."""
    torch.manual_seed(recipe.seed)
    folder, warm = out / recipe.stage, out / "transfer"
    resuming = has_checkpoint(folder)
    if recipe.stage == "finetune" and not resuming and not has_checkpoint(warm):
        raise FileNotFoundError(f"Stage 2 starts from stage 1; run `rillet convert --stage transfer` first ({warm}).")
    source = folder if resuming else warm if recipe.stage == "finetune" else None
    config = student_config(recipe.stage) if source is None else trained_config(source, recipe.stage)
    if window is not None:
        config = config.with_window(window)
    student = build_student(teacher.model, config)
    params = trainable_parameters(student)
    if recipe.stage == "finetune":
        if not resuming:  # start from stage 1; a resumed run reloads its own checkpoint in train()
            saved, _, _ = load_checkpoint(warm)
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)
        loss_fn = distillation_loss(teacher.model, student)
    else:
        loss_fn = attention_transfer_loss(teacher.model, student)
    corpus = Corpus.build(teacher.tokenizer.encode, teacher.fingerprint, shared_data, cache_dir)
    sampler = BatchSampler(corpus, teacher.tokenizer.encode, recipe.seq_len, recipe.batch_size, recipe.seed)
    schedule = Schedule(lr=recipe.lr, total_steps=recipe.steps)
    recorded = {**asdict(recipe), "student": json.loads(config.to_json()), "corpus_tokens": corpus.sizes(),
                "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                "device": _device_name(next(teacher.model.parameters()).device)}
    progress = train(recipe.stage, params, loss_fn, sampler, schedule, folder, max_seconds=max_seconds,
                     checkpoint_seconds=checkpoint_seconds, config=recorded,
                     lr_scale=lambda name: recipe.feature_lr_scale if ".feature_map_" in name else 1.0)
    return asdict(progress)


def _device_name(device: torch.device) -> str:
    """'cpu', or the GPU's name: a checkpoint's history then shows where each stretch of training ran."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def widen(teacher: Transformer, out: Path, feature_dim: int, noise: float = 0.5, seed: int = 0) -> dict:
    """Widen the newest checkpoint's feature maps to `feature_dim` in place (see widen.py); the next run of
    its stage resumes from the widened student. Returns the record added to its history."""
    stage = newest_stage(out)
    folder = out / stage
    saved, opt_state, progress = load_checkpoint(folder)
    recorded = trained_config(folder, stage)
    narrow = build_student(teacher, recorded)
    old_dim = narrow.layers[0].attention.hybrid.spec.feature_dim
    factor = widening_factor(old_dim, feature_dim)
    names = list(trainable_parameters(narrow))
    params = {name: torch.nn.Parameter(value)
              for name, value in widen_parameters({n: saved[n] for n in names}, factor, noise, seed).items()}
    optimizer = torch.optim.AdamW(params.values())
    if opt_state is not None:
        restore_moments(optimizer, params, widen_moments(moments_by_name(opt_state, names), factor))
    progress.config = {**progress.config, "student": json.loads(replace(recorded, feature_dim=feature_dim).to_json())}
    record = {"step": progress.step, "tokens": progress.tokens, "seconds": progress.seconds,
              "widened_from": old_dim, "widened_to": feature_dim, "widen_noise": noise}
    progress.history.append(record)
    save_checkpoint(folder, params, optimizer if opt_state is not None else None, progress)
    log.info("widened %s from %d to %d features at step %d", stage, old_dim, feature_dim, progress.step)
    return record


def export(teacher: LanguageModel, out: Path, target: Path, window: str | None = None) -> str:
    """Write the newest trained parameters (stage 2 if it ran, else stage 1) to `target` + manifest. `window`
    (default: the checkpoint's) sets the windows the file is read with; they have no parameters, so windows
    chosen after training (bench/layer_windows.py) ship without retraining."""
    stage = newest_stage(out)
    saved, _, progress = load_checkpoint(out / stage)
    config = trained_config(out / stage, stage)
    if window is not None:
        config = config.with_window(window)
    student = build_student(teacher.model, config)
    params = trainable_parameters(student)
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)
    summary = {"stage": stage, "steps": progress.step, "tokens": progress.tokens, "seconds": round(progress.seconds),
               **({"window": config.window_spec()} if window is not None else {})}
    digest = save_student(target, student, config, teacher.fingerprint,
                          extra={"training": json.dumps(summary)})
    manifest = {"file": target.name, "sha256": digest, "teacher_fingerprint": teacher.fingerprint, **summary}
    target.with_suffix(".json").write_text(json.dumps(manifest, indent=1) + "\n")
    return digest
