"""The linearized student against its teacher: perplexity by training stage, long-context loss by
position, chat answers after long unrelated context, decode speed by context length, state size.

Baseline in the same run: the teacher (softmax attention, KV cache). Students are read from the
converter's checkpoints (backbone/checkpoints/training/{transfer,finetune}), so every stage that has run
gets a row. Results go to bench/results/student.md.

    python -m bench.student [--sections ppl,long,chat,decode] [--long-tokens 32768]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import time
from pathlib import Path

import torch

from backbone.convert.checkpoint import load_checkpoint
from backbone.convert.run import student_config
from backbone.evaluate import bucket_perplexity, perplexity, streaming_nll
from backbone.generate import LanguageModel, SamplingConfig
from backbone.loader import load_model
from backbone.lora import LoRALinear
from backbone.student import StudentConfig, build_student, trainable_parameters, wrap_student

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RILLET_SHARED_DATA", REPO.parent / "shared" / "data"))
TRAINING = REPO / "backbone" / "checkpoints" / "training"
RESULTS = REPO / "bench" / "results" / "student.md"
CACHE = REPO / ".data" / "cache"

QUESTIONS = [
    ("What is the capital of France? Answer in one sentence.", "paris"),
    ("What is the capital of Japan? Answer in one sentence.", "tokyo"),
    ("How many days are there in a week? Answer with a number.", "7|seven"),
    ("What is 12 plus 30? Answer with a number.", "42"),
    ("Which planet is known as the Red Planet? Answer in one sentence.", "mars"),
    ("What is the chemical symbol for water? Answer briefly.", "h2o|h₂o"),
    ("Write a Python expression that gives the length of a list named items.", "len(items)"),
    ("In Python, which keyword defines a function? Answer with the keyword.", "def"),
    ("What does HTML stand for? Answer briefly.", "hypertext markup language"),
    ("Which language is primarily spoken in Brazil? Answer in one word.", "portuguese"),
]


def student_variant(teacher: LanguageModel, name: str) -> tuple[str, LanguageModel] | None:
    """A student model for one row: 'sinks' (linear part switched off), 'untrained', or a stage name."""
    if name in ("sinks", "untrained"):
        model = build_student(teacher.model, StudentConfig())
        if name == "sinks":
            with torch.no_grad():
                for layer in model.layers:
                    layer.attention.hybrid.log_weight.fill_(-1e4)
        label = "window 64 + 4 sinks, no linear part" if name == "sinks" else "hybrid, untrained Hedgehog"
        return label, wrap_student(model.eval(), teacher, name)
    folder = TRAINING / name
    if not (folder / "progress.json").exists():
        return None
    saved, _, progress = load_checkpoint(folder)
    model = build_student(teacher.model, student_config(name))
    params = trainable_parameters(model)
    with torch.no_grad():
        for key, value in saved.items():
            params[key].copy_(value)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.merge()
    label = {"transfer": "attention transfer", "finetune": "transfer + LoRA distillation"}[name]
    return f"{label} ({progress.tokens:,} tokens)", wrap_student(model.eval().requires_grad_(False), teacher, name)


def wikitext_ids(teacher: LanguageModel, count: int) -> torch.Tensor:
    text = (SHARED / "text" / "wikitext2_test.txt").read_text(encoding="utf-8")
    return torch.tensor(teacher.tokenizer.encode(text[: count * 8])[:count])


def essays_ids(teacher: LanguageModel, count: int) -> torch.Tensor:
    text = json.loads((SHARED / "niah" / "PaulGrahamEssays.json").read_text(encoding="utf-8"))["text"]
    ids = teacher.tokenizer.encode(text)
    while len(ids) < count:
        ids = ids + ids
    return torch.tensor(ids[:count])


def ppl_section(teacher: LanguageModel, variants: list[tuple[str, LanguageModel]]) -> list[str]:
    ids = wikitext_ids(teacher, 4096)
    rows = ["| model | ppl @1,024 | ppl @2,048 | ratio to teacher @2,048 |", "| --- | --- | --- | --- |"]
    base = {c: perplexity(teacher.model, ids, c) for c in (1024, 2048)}
    rows.append(f"| teacher (softmax) | {base[1024]:.2f} | {base[2048]:.2f} | 1.00 |")
    for label, model in variants:
        ppl = {c: perplexity(model.model, ids, c) for c in (1024, 2048)}
        rows.append(f"| {label} | {ppl[1024]:.2f} | {ppl[2048]:.2f} | {ppl[2048] / base[2048]:.3f} |")
        print(rows[-1], flush=True)
    return ["## Perplexity, wikitext2_test.txt, first 4,096 tokens (4 × 1,024 or 2 × 2,048 windows)", "", *rows]


def long_section(teacher: LanguageModel, student: LanguageModel, total: int) -> tuple[list[str], dict]:
    ids = essays_ids(teacher, total)
    marks = [256, 8192, total - 64]
    started = time.perf_counter()
    losses, states = streaming_nll(student, ids, keep_states_at=marks)
    student_seconds = time.perf_counter() - started
    teacher_losses, teacher_states = streaming_nll(teacher, ids[:8192 - 64], keep_states_at=[256, 8192 - 128])
    edges = [0, 1024, 2048, 4096, 8192, 12288, 16384, 24576, total]
    teacher_rows = {lo: p for lo, _, p in bucket_perplexity(teacher_losses, [e for e in edges if e <= 8192 - 64])}
    rows = ["| positions | student ppl | teacher ppl |", "| --- | --- | --- |"]
    for lo, hi, p in bucket_perplexity(losses, edges):
        t = teacher_rows.get(lo)
        rows.append(f"| {lo:,}–{hi:,} | {p:.2f} | {'n/a (past its context)' if t is None else f'{t:.2f}'} |")
    text = [f"## Long context: {total:,} tokens of the essays read through the state ({student_seconds:.0f} s)",
            "", *rows]
    return text, {"student": states, "teacher": teacher_states}


def decode_rate(model: LanguageModel, state, steps: int = 32) -> float:
    state = state.clone()
    token = 13
    with torch.inference_mode():
        model.step(token, state)
        started = time.perf_counter()
        for _ in range(steps):
            token = int(model.step(token, state).argmax())
        return steps / (time.perf_counter() - started)


def decode_section(teacher: LanguageModel, student: LanguageModel, states: dict) -> list[str]:
    rows = ["| context | student tokens/s | teacher tokens/s |", "| --- | --- | --- |"]
    for context, state in sorted(states["student"].items()):
        teacher_state = {256: states["teacher"].get(256), 8192: states["teacher"].get(8192 - 128)}.get(context)
        t = f"{decode_rate(teacher, teacher_state):.1f}" if teacher_state is not None else "n/a (past 8,192)"
        rows.append(f"| {context:,} | {decode_rate(student, state):.1f} | {t} |")
    size = student.new_state().nbytes
    return ["## Decode speed (greedy, batch 1, float32; teacher's 8k row at 8,064 tokens)", "", *rows, "",
            f"Student state: {size:,} bytes ({size / 2**20:.2f} MiB) in float32, whatever the length."]


def answer(model: LanguageModel, filler: str, question: str) -> str:
    messages = [{"role": "user", "content": f"Here is some text to keep in mind:\n\n{filler}"},
                {"role": "assistant", "content": "Thank you, I have read it."},
                {"role": "user", "content": question}]
    return model.chat(messages, SamplingConfig(max_new_tokens=40)).text


def chat_section(teacher: LanguageModel, student: LanguageModel) -> list[str]:
    text = (SHARED / "text" / "wikitext2_valid.txt").read_text(encoding="utf-8")
    ids = teacher.tokenizer.encode(text[:40_000])
    fillers = {n: teacher.tokenizer.decode(ids[:n]) for n in (1000, 4000)}
    rows = ["| question | after | teacher | student | student right |", "| --- | --- | --- | --- | --- |"]
    agree = right = 0
    for n in (1000, 4000):
        a = answer(student, fillers[n], QUESTIONS[0][0])
        rows.append(f"| France | {n:,} tokens | {answer(teacher, fillers[n], QUESTIONS[0][0])!r} | {a!r} | "
                    f"{'paris' in a.lower()} |")
    for question, expected in QUESTIONS:
        t, s = answer(teacher, fillers[1000], question), answer(student, fillers[1000], question)
        ok_t = any(e in t.lower() for e in expected.split("|"))
        ok_s = any(e in s.lower() for e in expected.split("|"))
        agree += ok_t == ok_s
        right += ok_s
        rows.append(f"| {question[:40]} | 1,000 tokens | {t[:60]!r} | {s[:60]!r} | {ok_s} |")
    return ["## Answers after long unrelated context", "", *rows, "",
            f"Agreement (both right or both wrong) on the 10 questions: {agree}/10; student right: {right}/10."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sections", default="ppl,long,chat,decode")
    parser.add_argument("--long-tokens", type=int, default=32768)
    parser.add_argument("--variants", default="sinks,untrained,transfer,finetune",
                        help="Rows of the perplexity table; the last one that exists is evaluated further.")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    teacher = load_model("teacher", cache_dir=CACHE)
    names = args.variants.split(",")
    variants = [v for v in (student_variant(teacher, n) for n in names) if v is not None]
    best = variants[-1][1]
    report = [f"# Student vs teacher ({time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} threads, "
              f"load average {os.getloadavg()[0]:.1f})", ""]
    if "ppl" in sections:
        report += [*ppl_section(teacher, variants), ""]
    states = None
    if "long" in sections or "decode" in sections:
        text, states = long_section(teacher, best, args.long_tokens)
        report += [*text, ""] if "long" in sections else []
    if "decode" in sections and states is not None:
        report += [*decode_section(teacher, best, states), ""]
    if "chat" in sections:
        report += [*chat_section(teacher, best), ""]
    report.append(f"Student evaluated: {variants[-1][0]}.")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
