"""`rillet convert`: the two stages end to end, plus exporting the shipped parameter file.

Folders: `<out>/transfer` and `<out>/finetune` hold resumable checkpoints; `export` writes the
trained parameters (≤ 20 MB) with a manifest carrying their sha256 beside them.
"""

from __future__ import annotations

import json
import logging
import math
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from backbone.convert.checkpoint import load_checkpoint
from backbone.convert.data import BatchSampler, Corpus
from backbone.convert.losses import attention_transfer_loss, distillation_loss
from backbone.convert.train import Schedule, train
from backbone.generate import LanguageModel
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


TRANSFER = StageConfig("transfer", steps=200, lr=1e-2, seq_len=1024, batch_size=2)
FINETUNE = StageConfig("finetune", steps=300, lr=1e-3, seq_len=1024, batch_size=2, seed=1)
LORA_RANK = 8


def student_config(stage: str) -> StudentConfig:
    return StudentConfig(lora_rank=LORA_RANK if stage == "finetune" else 0)


def run_stage(teacher: LanguageModel, recipe: StageConfig, out: Path, shared_data: Path, cache_dir: Path,
              max_seconds: float = math.inf, checkpoint_seconds: float = 600) -> dict:
    """Run (or resume) one stage for at most `max_seconds`; returns its progress as a dict."""
    torch.manual_seed(recipe.seed)
    student = build_student(teacher.model, student_config(recipe.stage))
    params = trainable_parameters(student)
    if recipe.stage == "finetune":
        warm = out / "transfer"
        if not (warm / "progress.json").exists():
            raise FileNotFoundError(f"Stage 2 starts from stage 1; run `rillet convert --stage transfer` first "
                                    f"({warm}).")
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
    config = {**asdict(recipe), "student": asdict(student_config(recipe.stage)), "corpus_tokens": corpus.sizes(),
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}
    progress = train(recipe.stage, params, loss_fn, sampler, schedule, out / recipe.stage, max_seconds=max_seconds,
                     checkpoint_seconds=checkpoint_seconds, config=config)
    return asdict(progress)


def export(teacher: LanguageModel, out: Path, target: Path) -> str:
    """Write the newest trained parameters (stage 2 if it ran, else stage 1) to `target` + manifest."""
    stage = "finetune" if (out / "finetune" / "progress.json").exists() else "transfer"
    saved, _, progress = load_checkpoint(out / stage)
    student = build_student(teacher.model, student_config(stage))
    params = trainable_parameters(student)
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)
    summary = {"stage": stage, "steps": progress.step, "tokens": progress.tokens, "seconds": round(progress.seconds)}
    digest = save_student(target, student, student_config(stage), teacher.fingerprint,
                          extra={"training": json.dumps(summary)})
    manifest = {"file": target.name, "sha256": digest, "teacher_fingerprint": teacher.fingerprint, **summary}
    target.with_suffix(".json").write_text(json.dumps(manifest, indent=1) + "\n")
    return digest
