"""Perplexity on the first 4,096 tokens of WikiText-2 *test* (evaluation only; nothing is tuned on it).

The tokens are cut into windows (default 4 × 1,024), each read from an empty context; every position
but the first of a window is scored. The reference is `transformers` reading the same GGUF, fed the
same token ids, in the same run.

    python -m bench.perplexity [--tokens 4096] [--window 1024] [--skip-baseline]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from backbone.gguf import find_gguf
from backbone.loader import load_model
from bench import shared_file

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "perplexity.md"
TEXT = "text/wikitext2_test.txt"
Logits = Callable[[torch.Tensor], torch.Tensor]


def evaluation_tokens(tokenizer, count: int) -> list[int]:
    """The first `count` tokens of the test text (read only as far as needed)."""
    text = shared_file(TEXT).read_text(encoding="utf-8")
    chars = count * 6
    while True:
        ids = tokenizer.encode(text[:chars])
        if len(ids) > count or chars >= len(text):
            break
        chars *= 2
    if len(ids) < count:
        raise SystemExit(f"The test text has only {len(ids)} tokens; asked for {count}.")
    return ids[:count]


@torch.inference_mode()
def perplexity(logits_of: Logits, ids: list[int], window: int, name: str) -> float:
    """exp(mean negative log-likelihood), accumulated in float64 over windows read independently."""
    total, count = 0.0, 0
    for start in tqdm(range(0, len(ids), window), desc=name, unit="window"):
        chunk = torch.tensor([ids[start : start + window]])
        if chunk.shape[1] < 2:
            continue
        logprobs = torch.log_softmax(logits_of(chunk)[0, :-1].double(), dim=-1)
        total -= logprobs.gather(1, chunk[0, 1:, None]).sum().item()
        count += chunk.shape[1] - 1
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--skip-baseline", action="store_true", help="leave out transformers")
    args = parser.parse_args()

    teacher = load_model("teacher", cache_dir=REPO / ".data" / "cache")
    ids = evaluation_tokens(teacher.tokenizer, args.tokens)
    rows = []
    started = time.perf_counter()
    rows.append(("teacher (ours, float32)", perplexity(teacher.forward_logits, ids, args.window, "teacher"),
                 time.perf_counter() - started))
    if not args.skip_baseline:
        from transformers import AutoModelForCausalLM

        path = find_gguf()
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
        started = time.perf_counter()
        rows.append(("teacher (transformers, float32)", perplexity(lambda x: hf(x).logits, ids, args.window,
                                                                  "transformers"), time.perf_counter() - started))
    reference = rows[-1][1]
    lines = [
        "# Perplexity, WikiText-2 test (evaluation only)",
        "",
        f"Command: `python -m bench.perplexity --tokens {args.tokens} --window {args.window}`. "
        f"First {args.tokens:,} tokens of `{TEXT}` (SmolLM2 tokenizer), {args.tokens // args.window} windows of "
        f"{args.window:,} tokens, each from an empty context. Reference: transformers on the same token ids.",
        "",
        "| model | perplexity | / reference | seconds |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {value:.3f} | {value / reference:.4f} | {seconds:.1f} |" for name, value, seconds in rows),
    ]
    for line in lines[-len(rows):]:
        print(line)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
