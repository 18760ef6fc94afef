"""Which layers need a long softmax window: how the shipped student's per-layer windows were chosen.

The window has no parameters, so the shipped parameters can be read with any window per layer. Under a
fixed state budget (45 KiB per window token summed over layers, i.e. 1.5 KiB per token per layer), the
windows should go where exact recall from far back pays. This reads the student on *selection* prose that
is neither training text, nor the held-out chapters of bench/heldout, nor WikiText-2 test: Vim user manual
chapters 20–29 and Python's pydoc reference topics, 2 × 2,048 tokens of each.

    python -m bench.layer_windows sensitivity [--base 128 --wide 1024 --narrow 32]
    python -m bench.layer_windows heads --layers 17,20 --windows 128,1024 [--base SPEC]
    python -m bench.layer_windows compare SPEC [SPEC ...]     e.g. 128 64,17:512,20:512 64,20:1024/128/512

`sensitivity` changes one layer's window at a time (to --wide, then to --narrow) and reports the change in
mean loss; `heads` does the same for one key/value head at a time, from the shipped windows (or --base), since
within a layer often one head does the far recall; `compare` reads whole window settings and reports
perplexity (overall and per source), state bytes and the ratio to the teacher. Each writes its own section
of bench/results/layer_windows.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import math
import pydoc_data.topics
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from backbone.attention.state import as_heads
from backbone.generate import LanguageModel
from backbone.loader import load_model
from backbone.student import DEFAULT_STUDENT, StudentConfig, load_student, read_student_file
from bench.heldout import vim_manual

CHAPTERS = tuple(f"usr_{n}.txt" for n in range(20, 30))
TOPICS = 60  # pydoc topics, in the module's order
SEQUENCE, PER_SOURCE = 2048, 4096
RESULTS = Path(__file__).resolve().parent / "results" / "layer_windows.md"
COMPARE_SECTION = "Window settings"


def selection_ids(teacher: LanguageModel) -> torch.Tensor:
    """(4, 2048) token ids: two sequences of Vim manual, two of pydoc topics."""
    manual = vim_manual(CHAPTERS)
    topics = "\n\n".join(list(pydoc_data.topics.topics.values())[:TOPICS])
    ids = [teacher.tokenizer.encode(text)[:PER_SOURCE] for text in (manual, topics)]
    return torch.tensor(ids[0] + ids[1]).view(-1, SEQUENCE)


def mean_loss(model: LanguageModel, ids: torch.Tensor) -> float:
    """Mean next-token loss over the sequences, each read in one full-sequence forward from position 0."""
    return float(sequence_losses(model, ids).mean())


def sequence_losses(model: LanguageModel, ids: torch.Tensor) -> torch.Tensor:
    """Each sequence's mean next-token loss."""
    with torch.inference_mode():
        return torch.stack([F.cross_entropy(model.model(row[None])[0, :-1], row[1:]) for row in ids])


def write_section(name: str, lines: list[str]) -> None:
    """Replace section `name` of the results file, keeping the others."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Softmax windows per layer and per key/value head\n"
    section = f"## {name}\n\n" + "\n".join(lines) + "\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else f"{text}\n{section}"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text.rstrip() + "\n")


def sensitivity(teacher: LanguageModel, ids: torch.Tensor, base: int, wide: int, narrow: int) -> None:
    teacher_loss = mean_loss(teacher, ids)
    base_loss = mean_loss(load_student(teacher, window=str(base)), ids)
    lines = [f"Command: `python -m bench.layer_windows sensitivity --base {base} --wide {wide} --narrow {narrow}`. "
             f"Every layer at window {base} (ppl {math.exp(base_loss):.2f}; teacher {math.exp(teacher_loss):.2f}), "
             "then one layer changed. Δ: change in mean loss (nats); negative is better.", "",
             f"| layer | Δ at {wide} | Δ at {narrow} |", "| --- | --- | --- |"]
    layers = teacher.config.num_layers
    for layer in tqdm(range(layers), desc="layers"):
        deltas = [mean_loss(load_student(teacher, window=f"{base},{layer}:{w}"), ids) - base_loss
                  for w in (wide, narrow)]
        lines.append(f"| {layer} | {deltas[0]:+.4f} | {deltas[1]:+.4f} |")
        print(lines[-1], flush=True)
    write_section("Sensitivity", lines)


def head_sensitivity(teacher: LanguageModel, ids: torch.Tensor, base: str | None, layers: list[int],
                     windows: list[int]) -> None:
    config: StudentConfig = read_student_file(DEFAULT_STUDENT)[0]
    config = config if base is None else config.with_window(base)
    base_loss = mean_loss(load_student(teacher, window=config.window_spec()), ids)
    kv_heads = teacher.config.num_kv_heads
    lines = [f"Command: `python -m bench.layer_windows heads --layers {','.join(map(str, layers))} --windows "
             f"{','.join(map(str, windows))}{'' if base is None else f' --base {base}'}`. From windows "
             f"{config.window_spec()} (ppl {math.exp(base_loss):.2f}), one key/value head's window changed. "
             "Δ: change in mean loss (nats); negative is better.", "",
             f"| layer | head | window | {' | '.join(f'Δ at {w}' for w in windows)} |",
             f"| --- | --- | --- | {' | '.join('---' for _ in windows)} |"]
    all_windows = config.layer_windows(teacher.config.num_layers)
    for layer in layers:
        current = as_heads(all_windows[layer]) * (kv_heads if isinstance(all_windows[layer], int) else 1)
        for head in tqdm(range(kv_heads), desc=f"layer {layer}"):
            deltas = []
            for window in windows:
                changed = tuple(window if h == head else w for h, w in enumerate(current))
                spec = config.with_layer_window(layer, changed).window_spec()
                deltas.append(mean_loss(load_student(teacher, window=spec), ids) - base_loss)
            lines.append(f"| {layer} | {head} | {current[head]} | {' | '.join(f'{d:+.4f}' for d in deltas)} |")
            print(lines[-1], flush=True)
    write_section(f"Per-head sensitivity, layers {','.join(map(str, layers))}", lines)


def compare(teacher: LanguageModel, ids: torch.Tensor, specs: list[str], section: str) -> None:
    teacher_ppl = math.exp(mean_loss(teacher, ids))
    option = "" if section == COMPARE_SECTION else f' --section "{section}"'
    lines = [f"Command: `python -m bench.layer_windows compare{option} {' '.join(specs)}`. "
             f"Teacher ppl {teacher_ppl:.2f}.",
             "", "| windows | window tokens over layers | state bytes | ppl | ratio to teacher | Vim manual | pydoc |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for spec in specs:
        student = load_student(teacher, window=spec)
        state = student.new_state()
        windows = state.spec.layer_windows or (state.spec.window,) * state.spec.num_layers
        mean_windows = sum(sum(as_heads(w)) / len(as_heads(w)) for w in windows)  # per-head ones averaged
        losses = sequence_losses(student, ids)
        ppl, halves = math.exp(float(losses.mean())), [math.exp(float(h.mean())) for h in losses.chunk(2)]
        lines.append(f"| {spec} | {mean_windows:,.0f} | {state.nbytes:,} | {ppl:.2f} | {ppl / teacher_ppl:.3f} | "
                     f"{halves[0]:.2f} | {halves[1]:.2f} |")
        print(lines[-1], flush=True)
    write_section(section, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sense = commands.add_parser("sensitivity", help="Change one layer's window at a time.")
    sense.add_argument("--base", type=int, default=128)
    sense.add_argument("--wide", type=int, default=1024)
    sense.add_argument("--narrow", type=int, default=32)
    heads = commands.add_parser("heads", help="Change one key/value head's window at a time.")
    heads.add_argument("--layers", required=True, help="Layers to probe, e.g. 17,20.")
    heads.add_argument("--windows", required=True, help="Windows to try for each head, e.g. 128,1024.")
    heads.add_argument("--base", help="Window setting to start from (default: the shipped student's).")
    settings = commands.add_parser("compare", help="Read whole window settings.")
    settings.add_argument("specs", nargs="+", help="Window settings, e.g. 128 or 64,17:512,20:512.")
    settings.add_argument("--section", default=COMPARE_SECTION, help="Section of the results file to write.")
    args = parser.parse_args()
    teacher = load_model("teacher")
    ids = selection_ids(teacher)
    if args.command == "sensitivity":
        sensitivity(teacher, ids, args.base, args.wide, args.narrow)
    elif args.command == "heads":
        head_sensitivity(teacher, ids, args.base, [int(x) for x in args.layers.split(",")],
                         [int(x) for x in args.windows.split(",")])
    else:
        compare(teacher, ids, args.specs, args.section)


if __name__ == "__main__":
    main()
