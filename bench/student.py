"""The linearized student against its teacher: perplexity by training stage, long-context loss by
position, chat answers after long unrelated context, decode speed by context length, state size.

Baseline in the same run: the teacher (softmax attention, KV cache). Students are read from the
converter's checkpoints (backbone/checkpoints/training/{transfer,finetune}), so every stage that has run
gets a row. Results go to bench/results/student.md, rebuilt from bench/results/student.json: a run
replaces the sections it ran and keeps the others, and perplexity rows accumulate by label (the label
carries the checkpoint's token count, so the table shows the student improving as it trains; a row
already measured is not measured again unless --fresh).

    python -m bench.student [--sections ppl,equivalence,long,decode,chat,chat-defaults] [--long-tokens 32768]
                            [--fresh]
                            [--window SPEC]

The newest stage is read with the windows the shipped file was exported with (its manifest's "window",
`rillet convert --stage export --window`), or with --window; the others with their checkpoints' own.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import dataclasses
import json
import re
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from backbone.convert.checkpoint import load_checkpoint
from backbone.convert.run import trained_config
from backbone.evaluate import bucket_perplexity, perplexity, streaming_nll
from backbone.generate import LanguageModel, SamplingConfig
from backbone.loader import load_model
from backbone.lora import LoRALinear
from backbone.student import DEFAULT_STUDENT, StudentConfig, build_student, trainable_parameters, wrap_student
from bench import shared_file

REPO = Path(__file__).resolve().parents[1]
TRAINING = REPO / "backbone" / "checkpoints" / "training"
RESULTS = REPO / "bench" / "results" / "student.md"
RECORD = RESULTS.with_suffix(".json")
SECTION_ORDER = ("ppl", "equivalence", "long", "decode", "chat", "chat-defaults", "chat-int8")
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


def student_variant(teacher: LanguageModel, name: str, plain: bool = False,
                    window: str | None = None) -> tuple[str, LanguageModel] | None:
    """A student model for one row: 'sinks' (linear part switched off), 'untrained', or a stage name;
    `plain` switches the length settings (sink distance cap, decay) off; `window` reads a stage with other
    windows than its checkpoint's."""
    if name in ("sinks", "untrained"):
        config = StudentConfig()
        model = build_student(teacher.model, config)
        if name == "sinks":
            with torch.no_grad():
                for layer in model.layers:
                    layer.attention.hybrid.log_weight.fill_(-1e4)
        label = f"window {config.window} + 4 sinks, no linear part" if name == "sinks" else "hybrid, untrained Hedgehog"
        if name == "untrained":
            label += config_label(config)
        return label, wrap_student(model.eval(), teacher, name)
    folder = TRAINING / name
    if not (folder / "progress.json").exists():
        return None
    saved, _, progress = load_checkpoint(folder)
    config = trained_config(folder, name)
    if window is not None:
        config = config.with_window(window)
    if plain:
        config = dataclasses.replace(config, sink_distance=None, decay_horizon=None)
    model = build_student(teacher.model, config)
    params = trainable_parameters(model)
    with torch.no_grad():
        for key, value in saved.items():
            params[key].copy_(value)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.merge()
    label = {"transfer": "attention transfer", "finetune": "transfer + LoRA distillation"}[name]
    label = f"{label} ({progress.tokens:,} tokens){config_label(config)}"
    if config.feature_dim is not None:
        label += f", {config.feature_dim} features"
    return label, wrap_student(model.eval().requires_grad_(False), teacher, name)


def shipped_window() -> str | None:
    """The windows the shipped file was exported with where they differ from its checkpoint's (manifest)."""
    manifest = DEFAULT_STUDENT.with_suffix(".json")
    return json.loads(manifest.read_text()).get("window") if manifest.exists() else None


def config_label(config: StudentConfig) -> str:
    """Rows keep the labels they were measured under: the decay is marked when on, the windows when they are
    not the first setting (64 everywhere), so rows of earlier settings stay in the table beside the new ones."""
    label = "" if config.decay_horizon is None else f", decay {config.decay_horizon:,.0f}"
    plain = config.window == 64 and not config.window_overrides
    return label + ("" if plain else f", window {config.describe_window()}")


def wikitext_ids(teacher: LanguageModel, count: int) -> torch.Tensor:
    text = shared_file("text/wikitext2_test.txt").read_text(encoding="utf-8")
    return torch.tensor(teacher.tokenizer.encode(text[: count * 8])[:count])


def essays_text() -> str:
    return json.loads(shared_file("niah/PaulGrahamEssays.json").read_text(encoding="utf-8"))["text"]


def long_streams(teacher: LanguageModel, count: int) -> dict[str, torch.Tensor]:
    """The essays concatenated (the haystack text, also seen in training) and WikiText-2 test (never
    trained on), `count` tokens of each."""
    streams = {}
    for name, text in (("essays", essays_text()),
                       ("wikitext2_test", shared_file("text/wikitext2_test.txt").read_text(encoding="utf-8"))):
        ids = teacher.tokenizer.encode(text[: count * 8])
        if len(ids) < count:
            raise ValueError(f"{name} has only {len(ids):,} tokens; --long-tokens asks for {count:,}")
        streams[name] = torch.tensor(ids[:count])
    return streams


def ppl_section(teacher: LanguageModel, variants: list[tuple[str, LanguageModel]],
                measured: dict[str, list[float]]) -> list[str]:
    """Perplexity rows; `measured` (label -> [ppl@1,024, ppl@2,048]) is filled in for missing labels."""
    ids = wikitext_ids(teacher, 4096)
    for label, model in [("teacher (softmax)", teacher), *variants]:
        if label not in measured:
            measured[label] = [perplexity(model.model, ids, c) for c in (1024, 2048)]
            print(f"{label}: {measured[label]}", flush=True)
    base = measured["teacher (softmax)"][1]
    rows = ["| model | ppl @1,024 | ppl @2,048 | ratio to teacher @2,048 |", "| --- | --- | --- | --- |"]
    ordered = ["teacher (softmax)", *(label for label in measured if label != "teacher (softmax)")]
    rows += [f"| {label} | {measured[label][0]:.2f} | {measured[label][1]:.2f} | {measured[label][1] / base:.3f} |"
             for label in ordered]
    return ["## Perplexity, wikitext2_test.txt, first 4,096 tokens (4 × 1,024 or 2 × 2,048 windows)", "", *rows]


def position_section(teacher: LanguageModel, student: tuple[str, LanguageModel]) -> list[str]:
    """Perplexity @2,048 split by position in the window: inside the softmax window both models see the
    same tokens exactly, so the gap beyond it is what the linear part fails to recall."""
    windows = wikitext_ids(teacher, 4096).view(-1, 2048)
    edges = [0, 64, 256, 1024, 2047]
    table = {}
    for label, model in [("teacher (softmax)", teacher), student]:
        by_position = np.stack([streaming_nll(model, window, chunk=2048)[0] for window in windows]).mean(axis=0)
        table[label] = bucket_perplexity(by_position, edges)
    teacher_row, student_row = table["teacher (softmax)"], table[student[0]]
    rows = ["| positions | teacher | student | ratio |", "| --- | --- | --- | --- |"]
    rows += [f"| {lo:,}–{hi:,} | {t:.2f} | {s:.2f} | {s / t:.3f} |"
             for (lo, hi, t), (_, _, s) in zip(teacher_row, student_row, strict=True)]
    return [f"### By position in the 2,048-token windows ({student[0]})", "", *rows]


def long_section(teacher: LanguageModel, student: LanguageModel, total: int,
                 plain: LanguageModel | None = None) -> tuple[list[str], dict]:
    """Perplexity by position over each long stream, read chunk by chunk through the state; returns the
    table and the states kept on the essays for the decode section. `plain`, the same student without
    its length settings, gets a column on the essays to show what they do."""
    edges = [e for e in (0, 1024, 2048, 4096, 8192, 12288, 16384, 24576) if e < total] + [total]
    teacher_end = min(total, 8192)  # the teacher's context
    header, rows = ["positions"], {(lo, hi): [f"{lo:,}–{hi:,}"] for lo, hi in pairwise(edges)}
    seconds, kept = 0.0, {}
    for name, ids in long_streams(teacher, total).items():
        marks = [256, 8192, total - 64] if name == "essays" else []
        started = time.perf_counter()
        losses, states = streaming_nll(student, ids, keep_states_at=marks)
        seconds += time.perf_counter() - started
        teacher_losses, teacher_states = streaming_nll(teacher, ids[:teacher_end], keep_states_at=[256, 8192 - 128]
                                                       if name == "essays" else [])
        if name == "essays":
            kept = {"student": states, "teacher": teacher_states}
        student_ppl = {(lo, hi): p for lo, hi, p in bucket_perplexity(losses, edges)}
        teacher_ppl = {(lo, hi): p for lo, hi, p in bucket_perplexity(teacher_losses, edges) if hi <= teacher_end}
        header += [f"student, {name}", f"teacher, {name}"]
        for bucket, cells in rows.items():
            t = teacher_ppl.get(bucket)
            cells += [f"{student_ppl[bucket]:.2f}", "n/a (past its context)" if t is None else f"{t:.2f}"]
        if plain is not None and name == "essays":
            plain_ppl = {(lo, hi): p for lo, hi, p in bucket_perplexity(streaming_nll(plain, ids)[0], edges)}
            header.append(f"student without sink cap and decay, {name}")
            for bucket, cells in rows.items():
                cells.append(f"{plain_ppl[bucket]:.2f}")
    table = [f"| {' | '.join(cells)} |" for cells in [header, ["---"] * len(header), *rows.values()]]
    text = [f"## Long context: {total:,} tokens of each stream read through the state (student: {seconds:.0f} s)",
            "", "The teacher reads each stream only up to its context of 8,192 tokens.",
            "The essays are also part of the training prose; WikiText-2 test never is.",
            "The last column reads the essays with the same parameters but neither length setting of "
            "StudentConfig (exact sink distances, no decay).", "", *table]
    return text, kept


def equivalence_section(teacher: LanguageModel, student: LanguageModel) -> list[str]:
    """The student's logits over 1,500 tokens read at once, against the same tokens read as prefills in
    pieces (state carried) and then one token at a time (the decoding step)."""
    ids = wikitext_ids(teacher, 1500)[None]
    rows = ["| read as | relative RMS of the logits vs one forward |", "| --- | --- |"]
    with torch.inference_mode():
        full = student.model(ids).double()
        for splits, steps in (([700, 1, 499, 300], 0), ([1000, 300], 200), ([1], 99)):
            state, pieces, start = student.new_state(), [], 0
            for length in splits:
                pieces.append(student.model(ids[:, start:start + length], state))
                start += length
            for position in range(start, start + steps):
                pieces.append(student.step(int(ids[0, position]), state)[None, None])
            got = torch.cat(pieces, dim=1).double()
            expected = full[:, : got.shape[1]]
            error = float((got - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt())
            label = " + ".join(f"{n:,}" for n in splits) + (f" then {steps} steps" if steps else "")
            rows.append(f"| {label} | {error:.1e} |")
    return ["## Full forward = prefill in pieces = prefill then steps (goal: relative RMS ≤ 2e-3)", "", *rows]


def decode_rate(model: LanguageModel, state, steps: int = 32, repeats: int = 3) -> float:
    """Greedy tokens per second from a copy of `state`: the median of `repeats` runs of `steps` tokens."""
    rates = []
    with torch.inference_mode():
        for _ in range(repeats):
            run_state, token = state.clone(), 13
            model.step(token, run_state)
            started = time.perf_counter()
            for _ in range(steps):
                token = int(model.step(token, run_state).argmax())
            rates.append(steps / (time.perf_counter() - started))
    return sorted(rates)[len(rates) // 2]


def decode_section(teacher: LanguageModel, student: LanguageModel, states: dict) -> list[str]:
    rows = ["| context | student tokens/s | teacher tokens/s | student / teacher |", "| --- | --- | --- | --- |"]
    for context, state in sorted(states["student"].items()):
        teacher_state = {256: states["teacher"].get(256), 8192: states["teacher"].get(8192 - 128)}.get(context)
        rate = decode_rate(student, state)
        if teacher_state is None:
            rows.append(f"| {context:,} | {rate:.1f} | n/a (past 8,192) | – |")
        else:
            base = decode_rate(teacher, teacher_state)
            rows.append(f"| {context:,} | {rate:.1f} | {base:.1f} | {rate / base:.2f}× |")
    size = student.new_state().nbytes
    return ["## Decode speed (greedy, batch 1, float32; the teacher's 8k row is at 8,064 tokens)", "", *rows, "",
            f"Student state: {size:,} bytes ({size / 2**20:.2f} MiB) in float32, whatever the length."]


def answer(model: LanguageModel, filler: str, question: str, sampling: SamplingConfig | None = None) -> str:
    messages = [{"role": "user", "content": f"Here is some text to keep in mind:\n\n{filler}"},
                {"role": "assistant", "content": "Thank you, I have read it."},
                {"role": "user", "content": question}]
    return model.chat(messages, sampling or SamplingConfig(max_new_tokens=40)).text


def user_sampling(max_new_tokens: int = 40) -> SamplingConfig:
    """The decoding users get (app/chat/defaults.py: temperature, top-p, penalties, n-gram blocking, loop
    stop), with a short answer length as in the greedy check."""
    from app.chat import defaults

    return SamplingConfig(max_new_tokens=max_new_tokens, **defaults.sampling_fields())


def is_right(reply: str, expected: str) -> bool:
    """Any of the `|`-separated answers appears as a whole word ("7" is not found in "720")."""
    return any(re.search(rf"(?<!\w){re.escape(e)}(?!\w)", reply.lower()) for e in expected.split("|"))


def chat_section(teacher: LanguageModel, student: LanguageModel, sampling: SamplingConfig | None = None
                 ) -> list[str]:
    """Each question asked after 1,000 (France also 4,000) tokens of unrelated prose in the same
    conversation, for two kinds of prose: the essays and WikiText-2 validation (with its `<unk>` and
    ` @-@ ` markup). Greedy without repetition controls, or with `sampling` (the defaults users get)."""
    if sampling is None:
        out = ["## Answers after long unrelated context", "",
               "Greedy, 40 new tokens. The prose is a user message of N tokens, acknowledged by the assistant, "
               "then the question. Right = the expected word appears in the reply."]
    else:
        shown = {k: v for k, v in dataclasses.asdict(sampling).items() if k != "seed"}
        out = ["## Answers after long unrelated context, with the decoding users get", "",
               f"The same check with the chat's default decoding (app/chat/defaults.py): {shown}."]
    texts = {"essays": essays_text()[:60_000],
             "WikiText-2 validation": shared_file("text/wikitext2_valid.txt").read_text(encoding="utf-8")[:60_000]}
    for name, text in texts.items():
        ids = teacher.tokenizer.encode(text)
        fillers = {n: teacher.tokenizer.decode(ids[:n]) for n in (1000, 4000)}
        rows = ["| question | after | teacher | student | teacher right | student right |",
                "| --- | --- | --- | --- | --- | --- |"]
        agree = right = teacher_right = 0
        france, expected = QUESTIONS[0]
        replies = {n: (answer(teacher, fillers[n], france, sampling), answer(student, fillers[n], france, sampling))
                   for n in (1000, 4000)}
        for n, (t, s) in replies.items():
            rows.append(f"| France | {n:,} tokens | {t!r} | {s!r} | {is_right(t, expected)} | "
                        f"{is_right(s, expected)} |")
        for i, (question, expected) in enumerate(QUESTIONS):
            t, s = replies[1000] if i == 0 else (answer(teacher, fillers[1000], question, sampling),
                                                 answer(student, fillers[1000], question, sampling))
            ok_t, ok_s = is_right(t, expected), is_right(s, expected)
            agree += ok_t == ok_s
            right += ok_s
            teacher_right += ok_t
            rows.append(f"| {question[:40]} | 1,000 tokens | {t[:60]!r} | {s[:60]!r} | {ok_t} | {ok_s} |")
        out += ["", f"### After {name}", "", *rows, "",
                f"10 questions: agreement (both right or both wrong) {agree}/10; teacher right {teacher_right}/10, "
                f"student right {right}/10."]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sections", default="ppl,equivalence,long,decode,chat,chat-defaults")
    parser.add_argument("--long-tokens", type=int, default=32768)
    parser.add_argument("--variants", default="sinks,untrained,transfer,finetune",
                        help="Rows of the perplexity table; the last one that exists is evaluated further.")
    parser.add_argument("--fresh", action="store_true", help="Forget earlier sections and rows.")
    parser.add_argument("--window", default=shipped_window(),
                        help="Windows to read the newest stage with (default: the shipped file's).")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    record = {"sections": {}, "ppl": {}} if args.fresh or not RECORD.exists() else json.loads(RECORD.read_text())
    teacher = load_model("teacher", cache_dir=CACHE)
    names = args.variants.split(",")
    windows = {names[-1]: args.window}
    variants = [v for v in (student_variant(teacher, n, window=windows.get(n)) for n in names) if v is not None]
    best = variants[-1][1]
    stamp = (f"{time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} threads, load average "
             f"{os.getloadavg()[0]:.1f}, student: {variants[-1][0]}")
    new: dict[str, list[str]] = {}
    if "ppl" in sections:
        new["ppl"] = [*ppl_section(teacher, variants, record["ppl"]), "", *position_section(teacher, variants[-1])]
    if "equivalence" in sections:
        new["equivalence"] = equivalence_section(teacher, best)
    states = None
    if "long" in sections or "decode" in sections:
        plain = (student_variant(teacher, names[-1], plain=True, window=args.window)
                 if names[-1] in ("transfer", "finetune") else None)
        text, states = long_section(teacher, best, args.long_tokens, None if plain is None else plain[1])
        if "long" in sections:
            new["long"] = text
    if "decode" in sections and states is not None:
        new["decode"] = decode_section(teacher, best, states)
    if "chat" in sections:
        new["chat"] = chat_section(teacher, best)
    if "chat-defaults" in sections:
        new["chat-defaults"] = chat_section(teacher, best, user_sampling())
    if "chat-int8" in sections:  # the same greedy check as `chat`, both models as the app serves them on a CPU
        int8 = [load_model(kind, cache_dir=CACHE, precision="int8") for kind in ("teacher", "student")]
        lines = chat_section(*int8)
        new["chat-int8"] = [lines[0] + " (int8 weights)", lines[1],
                            lines[2] + " Both models at int8 (backbone/quantize.py; the student decoding through "
                            "its compiled step), to compare with the float32 table above.", *lines[3:]]
    for name, lines in new.items():
        record["sections"][name] = [*lines, "", f"_Measured {stamp}._"]
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    body = [line for name in SECTION_ORDER if name in record["sections"] for line in [*record["sections"][name], ""]]
    RESULTS.write_text("\n".join(["# Student vs teacher", "", *body]))
    print("\n".join(line for lines in new.values() for line in lines))


if __name__ == "__main__":
    main()
