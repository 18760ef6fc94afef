"""Perplexity @2,048 by position on prose that is neither training text nor WikiText-2 test: Vim's user
manual (installed with vim). Choosing between checkpoints on this keeps the test set for reporting only.

    python -m bench.heldout [--training] [--windows 128 64,17:512,20:1024]

--training adds the newest stage-2 checkpoint; --windows reads the shipped parameters with other softmax
windows (they have no parameters; forms of `StudentConfig.with_window`), which is how the shipped windows
were checked.

Writes bench/results/heldout.md.
"""

from __future__ import annotations

import argparse
import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from backbone.evaluate import bucket_perplexity, streaming_nll
from backbone.generate import LanguageModel
from backbone.loader import load_model
from backbone.student import load_student
from bench.student import student_variant

MANUAL = Path("/usr/share/vim/vim90/doc")
CHAPTERS = ("usr_03.txt", "usr_04.txt", "usr_05.txt", "usr_10.txt")
TOKENS, WINDOW = 8192, 2048
EDGES = [0, 64, 256, 1024, WINDOW - 1]
RESULTS = Path(__file__).resolve().parent / "results" / "heldout.md"


def vim_manual(chapters: tuple[str, ...]) -> str:
    """The text of these chapters of Vim's user manual, or a clear exit if it is not installed."""
    missing = [c for c in chapters if not (MANUAL / c).is_file()]
    if missing:
        raise SystemExit(f"Vim's user manual is not installed ({MANUAL / missing[0]}); "
                         "install it (Debian: apt install vim-runtime).")
    return "".join((MANUAL / c).read_text(encoding="utf-8", errors="replace") for c in chapters)


def heldout_ids(teacher: LanguageModel) -> torch.Tensor:
    return torch.tensor(teacher.tokenizer.encode(vim_manual(CHAPTERS))[:TOKENS])


def by_position(model: LanguageModel, ids: torch.Tensor) -> tuple[float, list[float]]:
    losses = np.stack([streaming_nll(model, window, chunk=WINDOW)[0] for window in ids.view(-1, WINDOW)]).mean(0)
    return math.exp(float(losses.mean())), [ppl for _, _, ppl in bucket_perplexity(losses, EDGES)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--training", action="store_true", help="Also the newest stage-2 training checkpoint.")
    parser.add_argument("--windows", nargs="*", default=[], help="Softmax windows to read the shipped "
                        "parameters with, e.g. 128 64,17:512 (one window, or one with layers of their own).")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    teacher = load_model("teacher")
    ids = heldout_ids(teacher)
    models = [("teacher (softmax)", teacher), ("shipped student", load_student(teacher))]
    if args.training and (trained := student_variant(teacher, "finetune")) is not None:
        models.append(trained)
    models += [(f"shipped parameters, window {w}", load_student(teacher, window=w)) for w in args.windows]
    buckets = [f"{lo:,}–{hi:,}" for lo, hi in pairwise(EDGES)]
    lines = [f"## Held-out prose: Vim user manual ({', '.join(CHAPTERS)}), first {TOKENS:,} tokens, "
             f"{TOKENS // WINDOW} × {WINDOW:,} windows", "",
             f"| model | ppl | ratio to teacher | {' | '.join(buckets)} |", "| --- " * (3 + len(buckets)) + "|"]
    teacher_ppl = None
    for label, model in models:
        ppl, parts = by_position(model, ids)
        teacher_ppl = teacher_ppl or ppl
        lines.append(f"| {label} | {ppl:.2f} | {ppl / teacher_ppl:.3f} | {' | '.join(f'{p:.2f}' for p in parts)} |")
        print(lines[-1], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(["# Held-out prose", "", *lines, ""]))


if __name__ == "__main__":
    main()
