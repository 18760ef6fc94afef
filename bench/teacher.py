"""Teacher speed: load time (cold and cached), prefill and decode tokens/s at several context lengths.

Baseline, measured in the same run: `transformers` (LlamaForCausalLM reading the same GGUF, SDPA
attention, its own KV cache). Decoding is greedy, one token at a time, batch 1, float32 unless
--dtype says otherwise. The machine is shared, so the load average is printed beside the figures.

    python -m bench.teacher [--contexts 256,2048,8000] [--decode-tokens 32] [--threads N] [--dtype float32]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from backbone.gguf import find_gguf
from backbone.loader import load_model
from bench import write_keeping_notes

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "teacher.md"
LOAD_SNIPPET = """
import sys, time, torch
from pathlib import Path
started = time.perf_counter()
{body}
print(time.perf_counter() - started)
"""
OURS_LOAD = "from backbone.loader import load_model\nload_model('teacher', cache_dir=Path(sys.argv[1]))"
HF_LOAD = """from transformers import AutoModelForCausalLM
from backbone.gguf import find_gguf
p = find_gguf()
AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)"""


def timed_load(body: str, cache_dir: Path) -> float:
    """Seconds for one load in a fresh process (interpreter start and `import torch` excluded)."""
    code = LOAD_SNIPPET.format(body=body)
    out = subprocess.run([sys.executable, "-c", code, str(cache_dir)], check=True, capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    return float(out.stdout.strip().splitlines()[-1])


def per_second(count: int, run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def best_decode_rate(step: Callable[[int], int], first: int, tokens: int, blocks: int = 4) -> tuple[float, float]:
    """Greedy decoding in `blocks` runs: the fastest run's tokens per wall-clock second, and tokens per
    second of this process's CPU time. Other processes share this CPU; with one thread, the CPU-time
    rate is close to what an idle machine gives (memory bandwidth is still shared)."""
    size = max(1, tokens // blocks)
    token, wall, cpu = first, [], []
    for _ in range(blocks):
        started, started_cpu = time.perf_counter(), time.process_time()
        for _ in range(size):
            token = step(token)
        wall.append(size / (time.perf_counter() - started))
        cpu.append(size / max(time.process_time() - started_cpu, 1e-9))
    return max(wall), max(cpu)


def ours_speed(lm, ids: list[int], decode_tokens: int) -> tuple[float, float, float]:
    """(prefill tokens/s over `ids`, decode tokens/s right after it, decode tokens per CPU second)."""
    state = lm.new_state()
    prefill = per_second(len(ids), lambda: lm.prefill(ids, state))
    lm.step(ids[0], state)  # one warm-up step at this length
    return prefill, *best_decode_rate(lambda token: int(lm.step(token, state).argmax()), ids[1], decode_tokens)


@torch.inference_mode()
def hf_speed(model, ids: list[int], decode_tokens: int) -> tuple[float, float, float]:
    from transformers import DynamicCache

    cache = DynamicCache()
    box: dict[str, torch.Tensor] = {}

    def prefill() -> None:
        for start in range(0, len(ids), 512):  # same chunking as ours, so memory stays bounded
            box["logits"] = model(torch.tensor([ids[start : start + 512]]), past_key_values=cache,
                                  use_cache=True, logits_to_keep=1).logits

    rate = per_second(len(ids), prefill)
    model(torch.tensor([[ids[0]]]), past_key_values=cache, use_cache=True)

    def step(token: int) -> int:
        logits = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits
        return int(logits[0, -1].argmax())

    return rate, *best_decode_rate(step, ids[1], decode_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="256,2048,8000", help="prompt lengths before decoding")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-baseline", action="store_true", help="leave out transformers")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    contexts = [int(c) for c in args.contexts.split(",")]
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        cold = timed_load(OURS_LOAD, Path(tmp))
        cached = min(timed_load(OURS_LOAD, Path(tmp)) for _ in range(3))
    hf_load = None if args.skip_baseline else timed_load(HF_LOAD, REPO)
    print(f"load: ours cold {cold:.2f} s, cached {cached:.2f} s, transformers {hf_load or float('nan'):.2f} s")

    lm = load_model("teacher", cache_dir=REPO / ".data" / "cache", dtype=dtype)
    text = (REPO / "README.md").read_text() if (REPO / "README.md").exists() else ""
    base = lm.tokenizer.encode(text + Path(__file__).read_text()) or [100]
    rows = []
    hf = None
    if not args.skip_baseline:
        from transformers import AutoModelForCausalLM

        path = find_gguf()
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()
    for context in contexts:
        ids = (base * (context // len(base) + 1))[:context]
        ours = ours_speed(lm, ids, args.decode_tokens)
        theirs = hf_speed(hf, ids, args.decode_tokens) if hf is not None else (float("nan"),) * 3
        rows.append((context, *ours, *theirs))
        print(f"context {context}: prefill {ours[0]:.1f} tok/s (transformers {theirs[0]:.1f}), decode "
              f"{ours[1]:.1f} tok/s, {ours[2]:.1f} per CPU s (transformers {theirs[1]:.1f}, {theirs[2]:.1f})",
              flush=True)
    report(args, cold, cached, hf_load, rows, (load_before, os.getloadavg()[0]))


def report(args, cold: float, cached: float, hf_load: float | None, rows: list[tuple], load: tuple) -> None:
    def ratio(a: float | None, b: float) -> str:
        return f"{a / b:.2f}" if a is not None and a == a and b == b and b > 0 else "—"

    lines = [
        f"# Teacher speed (SmolLM2-135M-Instruct, {args.dtype}, torch {torch.__version__}, "
        f"threads: {torch.get_num_threads()})",
        "",
        f"Command: `python -m bench.teacher --contexts {args.contexts} --decode-tokens {args.decode_tokens}"
        + (f" --threads {args.threads}" if args.threads else "") + f" --dtype {args.dtype}`. "
        f"Load average (1 min) on this shared 2-core machine: {load[0]:.1f} before, {load[1]:.1f} after.",
        "Baseline: `transformers` reading the same GGUF (SDPA attention, DynamicCache), measured in the same run.",
        "",
        "## Load (fresh process; interpreter start and `import torch` excluded, our own imports included)",
        "",
        "| what | seconds | transformers from_pretrained(gguf) / ours |",
        "|---|---:|---:|",
        f"| cold: read GGUF, dequantize, write cache | {cold:.2f} | {ratio(hf_load, cold)} |",
        f"| cached: safetensors + tokenizer.json (best of 3) | {cached:.2f} | {ratio(hf_load, cached)} |",
        f"| transformers (no cache of its own) | {hf_load:.2f} | |" if hf_load else "",
        "",
        f"## Prefill and decode (tokens/s; decode: {args.decode_tokens} greedy steps after the prompt in 4 runs, "
        "the fastest run counted)",
        "",
        "| context | prefill ours | prefill transformers | ours / transformers | decode ours | decode transformers "
        "| ours / transformers | decode ours per CPU s | decode transformers per CPU s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for context, p_ours, d_ours, c_ours, p_hf, d_hf, c_hf in rows:
        lines.append(f"| {context:,} | {p_ours:.1f} | {p_hf:.1f} | {ratio(p_ours, p_hf)} | {d_ours:.1f} | {d_hf:.1f} "
                     f"| {ratio(d_ours, d_hf)} | {c_ours:.1f} | {c_hf:.1f} |")
    write_keeping_notes(RESULTS, lines)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
