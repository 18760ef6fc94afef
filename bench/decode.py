"""Decode speed by context: the student (hybrid attention, constant-size state) against its teacher (KV cache).

Greedy decoding through `LanguageModel.step`, batch 1, float32, one token at a time, as `stream` does.
Baseline in the same run: the teacher at 256 / 2,048 / 8,000 tokens of context (8,192 is its limit); the
student runs at 256 / 8,000 / 32,768. The student uses untrained feature maps: the same operations, so
the same speed, as trained ones.

States at long context are built cheaply, and the shortcut does not change the work of a decode step:
- student: 256 real tokens are prefilled, then every layer's token count is set to the context. A step
  does the same operations on the same constant-size tensors at any position past the window (only RoPE
  reads another row of its table), so its cost does not depend on what the state holds or its position;
- teacher: 256 real tokens, then random keys/values up to the context. Its attention reads every cached
  key and value, whatever their values, so the cost depends only on the length.

`--baseline DIR` also measures another checkout of the code (for example the commit before a change, from
`git worktree add`) in the same run, alternating rounds with this one, and reports both.

    python -m bench.decode [--tokens 32] [--rounds 3] [--threads 1] [--baseline DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "decode.md"
CACHE = REPO / ".data" / "cache"
PROMPT_TOKENS = 256
TEACHER_CONTEXTS = (256, 2048, 8000)
STUDENT_CONTEXTS = (256, 8000, 32768)


def teacher_state(model, prompt: list[int], context: int):
    state = model.new_state()
    model.prefill(prompt, state)
    generator = torch.Generator().manual_seed(0)
    extra = context - len(prompt)
    if extra > 0:
        for layer in state.layers:
            shape = (1, model.config.num_kv_heads, extra, model.config.head_dim)
            layer.append(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
    return state


def student_state(model, prompt: list[int], context: int):
    state = model.new_state()
    model.prefill(prompt, state)
    for layer in state.layers:
        layer.num_tokens = context
    return state


def decode(model, state, tokens: int) -> tuple[float, float]:
    """Greedy-decode `tokens` tokens into `state`: (wall seconds, CPU seconds of this process)."""
    token = 13
    for _ in range(2):  # outside the timing: the RoPE table grows on the first two steps past its end
        token = int(model.step(token, state).argmax())
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(tokens):
        token = int(model.step(token, state).argmax())
    return time.perf_counter() - wall, time.process_time() - cpu


def attention_step_us(steps: int = 200, repeats: int = 5) -> float:
    """CPU µs of one hybrid attention decode step, one layer of SmolLM2's shape, past the window."""
    from backbone.attention import HybridAttention

    attention = HybridAttention(9, 3, 64)
    state = attention.new_state()
    q, k, v = torch.randn(1, 9, 300, 64), torch.randn(1, 3, 300, 64), torch.randn(1, 3, 300, 64)
    attention(q, k, v, state)
    q, k, v = q[:, :, :1], k[:, :, :1], v[:, :, :1]
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        for _ in range(steps):
            attention(q, k, v, state)
        best = min(best, (time.thread_time() - started) / steps)
    return best * 1e6


def measure(tokens: int) -> dict[str, list[float]]:
    """{"teacher 8000": [tokens/s, CPU ms per token], ..., "attention step": [CPU µs]} for this checkout."""
    from backbone.loader import load_model
    from backbone.student import StudentConfig, build_student, wrap_student

    teacher = load_model("teacher", cache_dir=CACHE)
    student = wrap_student(build_student(teacher.model, StudentConfig()).eval(), teacher, "untrained")
    prompt = teacher.tokenizer.encode(" the quick brown fox jumps over the lazy dog" * 40)[:PROMPT_TOKENS]
    results: dict[str, list[float]] = {}
    with torch.inference_mode():
        results["attention step"] = [attention_step_us()]
        for context in TEACHER_CONTEXTS:
            wall, cpu = decode(teacher, teacher_state(teacher, prompt, context), tokens)
            results[f"teacher {context}"] = [tokens / wall, 1e3 * cpu / tokens]
        for context in STUDENT_CONTEXTS:
            wall, cpu = decode(student, student_state(student, prompt, context), tokens)
            results[f"student {context}"] = [tokens / wall, 1e3 * cpu / tokens]
    return results


def measure_in(tree: Path, tokens: int, threads: int) -> dict[str, list[float]]:
    """One round in a fresh process whose `backbone` package comes from `tree`."""
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", "--tokens", str(tokens),
               "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(runs: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Per row: the highest tokens/s and, separately, the lowest CPU time over the rounds."""
    best = {}
    for name in runs[0]:
        if name == "attention step":
            best[name] = [min(run[name][0] for run in runs)]
        else:
            best[name] = [max(run[name][0] for run in runs), min(run[name][1] for run in runs)]
    return best


def table(current: dict[str, list[float]], before: dict[str, list[float]] | None) -> list[str]:
    head = "| model | context | tokens/s | CPU ms/token | student speed / teacher's (CPU time) |"
    rule = "|---|---:|---:|---:|---:|"
    if before is not None:
        head += " before: CPU ms/token | speed-up (CPU time) |"
        rule += "---:|---:|"
    rows = [head, rule]
    for name, (rate, cpu) in ((n, r) for n, r in current.items() if n != "attention step"):
        kind, context = name.split()
        teacher = current.get(f"teacher {context}")
        ratio = ""
        if kind == "student":
            ratio = f"{teacher[1] / cpu:.2f}" if teacher else "teacher cannot (past 8,192)"
        row = f"| {kind} | {int(context):,} | {rate:.1f} | {cpu:.1f} | {ratio} |"
        if before is not None:
            row += f" {before[name][1]:.1f} | {before[name][1] / cpu:.2f} |"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="decode steps timed per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best round per row is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a shared machine usable)")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure in the same run")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(measure(args.tokens)))
        return

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    runs: list[dict[str, list[float]]] = []
    baseline_runs: list[dict[str, list[float]]] = []
    for round_index in range(args.rounds):
        if args.baseline is not None:
            baseline_runs.append(measure_in(args.baseline.resolve(), args.tokens, args.threads))
        runs.append(measure_in(REPO, args.tokens, args.threads))
        print(f"round {round_index + 1}/{args.rounds} done ({time.perf_counter() - started:.0f} s)", flush=True)
    current = best_of(runs)
    before = best_of(baseline_runs) if baseline_runs else None
    rows = table(current, before)
    step_us = current["attention step"][0]
    step = f"One hybrid attention decode step (one layer of SmolLM2's shape, 1 thread): {step_us:.0f} µs CPU"
    if before is not None:
        before_us = before["attention step"][0]
        step += f"; before: {before_us:.0f} µs ({before_us / step_us:.2f}× faster)"
    rows += ["", step + "."]
    student = {int(n.split()[1]): r[1] for n, r in current.items() if n.startswith("student")}
    flat = student[min(student)] / student[max(student)]
    command = " ".join(["python -m bench.decode", *sys.argv[1:]])
    text = [
        "# Decode speed by context: student vs teacher",
        "",
        f"Command: `{command}`. torch {torch.__version__}, {args.threads} thread(s), float32, batch 1, greedy; "
        f"best of {args.rounds} rounds of {args.tokens} tokens, each round in a fresh process. Load average "
        f"(1 min) on this shared 2-core machine: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after. "
        "tokens/s is wall-clock and moves with the other work on the machine; CPU ms/token is the process's "
        "CPU time, which waiting for a busy core does not inflate, so the ratios use it.",
        "",
        *rows,
        "",
        f"Student flatness: speed (CPU time) at {max(student):,} / at {min(student):,} tokens = {flat:.2f}.",
        "",
        "Long-context states are built cheaply (see the module docstring of bench/decode.py): the student's "
        "token count is advanced past 256 prefilled tokens, the teacher's cache is filled with random "
        "keys/values. Neither changes the work of a decode step.",
    ]
    if before is not None:
        text += ["", f"'before' is the code in {args.baseline}, measured in the same run, rounds alternating."]
    print("\n".join(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(text) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
