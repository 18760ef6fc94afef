"""Attention cost on this CPU: causal softmax (PyTorch SDPA) vs chunked linear vs hybrid attention.

One layer of SmolLM2's shape (9 query heads, 3 key/value heads, head dim 64, Hedgehog features of 128),
batch 1, float32, no gradients:
- prefill: forward time (best of several) and peak extra memory over T tokens, each measured in a fresh
  process as peak RSS above the inputs; hybrid prefills a fresh state (long prompts go in 4,096-token
  segments); softmax attention is skipped past --softmax-max and its time extrapolated as T²;
- decode: time of one token's attention at context length L: softmax over a KV cache vs the constant-size
  linear and hybrid states, and the bytes each holds for all 30 layers.
Softmax attention is the baseline; the crossover is where hybrid attention becomes cheaper.

    python -m bench.attention [--lengths 1024 4096 16384 65536] [--decode-lengths ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from backbone.attention import HybridAttention, LinearState, chunked_linear_attention, linear_attention_step

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 9, 3, 64, 30
METHODS = ("softmax", "linear", "hybrid")
RESULTS = Path(__file__).parent / "results" / "attention.md"


def _proc_status_kib(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _inputs(length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(1, HEADS, length, HEAD_DIM, generator=generator)
    k = torch.randn(1, KV_HEADS, length, HEAD_DIM, generator=generator)
    v = torch.randn(1, KV_HEADS, length, HEAD_DIM, generator=generator)
    return q, k, v


def _forward_fn(method: str):
    hybrid = HybridAttention(HEADS, KV_HEADS, HEAD_DIM, backend="torch")
    if method == "softmax":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    if method == "linear":
        return lambda q, k, v: chunked_linear_attention(hybrid.feature_map_q(q), hybrid.feature_map_k(k), v)[0]
    return lambda q, k, v: hybrid(q, k, v, hybrid.new_state())  # prefill into a fresh state, as in use


def measure_forward(method: str, length: int, repeats: int) -> dict[str, float]:
    """Run in a fresh process: peak memory of the first call above the inputs, then the best time."""
    forward = _forward_fn(method)
    q, k, v = _inputs(length)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
    baseline = _proc_status_kib("VmRSS")
    times = []
    with torch.no_grad():
        for _ in range(1 + repeats):
            start = time.perf_counter()
            forward(q, k, v)
            times.append(time.perf_counter() - start)
            if len(times) == 1:
                peak = _proc_status_kib("VmHWM") - baseline
    return {"seconds": min(times[1:] or times), "peak_mib": peak / 1024}


def _forward_in_subprocess(method: str, length: int, repeats: int) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.attention", "--measure-one", method, str(length), str(repeats)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # idle threads sleep: steadier on a shared CPU
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median_seconds(fn, steps: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_decode(context: int, steps: int) -> dict[str, float]:
    """Seconds for one token's attention after `context` tokens, and the 30-layer state sizes in bytes."""
    q1, k1, v1 = _inputs(1, seed=1)
    cache_k = torch.randn(1, KV_HEADS, context + 1, HEAD_DIM)
    cache_v = torch.randn(1, KV_HEADS, context + 1, HEAD_DIM)

    def softmax_step():
        cache_k[:, :, context] = k1[:, :, 0]
        cache_v[:, :, context] = v1[:, :, 0]
        return F.scaled_dot_product_attention(q1, cache_k, cache_v, enable_gqa=True)

    hybrid = HybridAttention(HEADS, KV_HEADS, HEAD_DIM, backend="torch")
    with torch.no_grad():
        linear_state = LinearState(torch.rand(1, KV_HEADS, 128, HEAD_DIM), torch.rand(1, KV_HEADS, 128))

        def linear_step():
            features_q, features_k = hybrid.feature_map_q(q1)[:, :, 0], hybrid.feature_map_k(k1)[:, :, 0]
            return linear_attention_step(features_q, features_k, v1[:, :, 0], linear_state)

        state = hybrid.new_state()
        for start in range(0, context, 8192):  # prefill in segments, carrying the state
            q, k, v = _inputs(min(8192, context - start), seed=start)
            hybrid(q, k, v, state)

        def hybrid_step():
            snapshot = state.num_tokens
            hybrid(q1, k1, v1, state)
            state.num_tokens = snapshot  # stay at the same context length

        kv_cache_bytes = 2 * LAYERS * KV_HEADS * (context + 1) * HEAD_DIM * 4
        hybrid_bytes = LAYERS * sum(t.numel() * 4 for t in state.tensors.values())
        linear_bytes = LAYERS * sum(t.numel() * 4 for t in linear_state)
        return {
            "softmax": _median_seconds(softmax_step, steps),
            "linear": _median_seconds(linear_step, steps),
            "hybrid": _median_seconds(hybrid_step, steps),
            "softmax_bytes": kv_cache_bytes,
            "linear_bytes": linear_bytes,
            "hybrid_bytes": hybrid_bytes,
        }


def crossover(lengths: list[int], baseline: list[float], candidate: list[float]) -> str:
    """Length where `candidate` becomes cheaper than `baseline` (log-linear interpolation)."""
    gaps = [math.log(c / b) for b, c in zip(baseline, candidate, strict=True)]
    if gaps[0] <= 0:
        return f"≤ {lengths[0]:,} (cheaper at every measured length)"
    for (l0, g0), (l1, g1) in zip(
        zip(lengths, gaps, strict=True), zip(lengths[1:], gaps[1:], strict=True), strict=False
    ):
        if g1 <= 0:
            fraction = g0 / (g0 - g1)
            return f"≈ {round(math.exp(math.log(l0) + fraction * (math.log(l1) - math.log(l0)))):,} tokens"
    return f"> {lengths[-1]:,} (never cheaper in the measured range)"


def run(lengths: list[int], decode_lengths: list[int], softmax_max: int, steps: int) -> str:
    forward: dict[tuple[str, int], dict[str, float]] = {}
    jobs = [(m, t) for t in lengths for m in METHODS if m != "softmax" or t <= softmax_max]
    for method, length in tqdm(jobs, desc="prefill"):
        forward[method, length] = _forward_in_subprocess(method, length, repeats=5 if length <= 4096 else 2)
    measured_softmax = max(t for t in lengths if t <= softmax_max)
    for length in lengths:
        if length > softmax_max:  # quadratic extrapolation from the longest measured length
            seconds = forward["softmax", measured_softmax]["seconds"] * (length / measured_softmax) ** 2
            forward["softmax", length] = {"seconds": seconds, "peak_mib": float("nan"), "estimated": True}

    torch.set_num_threads(1)  # one token's attention is too small to share; keeps the timings steady
    decode = {length: measure_decode(length, steps) for length in tqdm(decode_lengths, desc="decode")}

    lines = [
        f"# Attention cost on this CPU ({torch.get_num_threads()}-thread decode, torch {torch.__version__})",
        "",
        f"One layer of SmolLM2's shape ({HEADS} query heads, {KV_HEADS} KV heads, head dim {HEAD_DIM}, Hedgehog "
        "features 128), batch 1, float32, no gradients. Softmax = PyTorch SDPA (causal) = baseline. Measured on a "
        "shared 2-core machine: absolute times move by up to 2× between runs with other load; ratios less so.",
        "",
        "## Prefill: forward time (ms) and peak extra memory (MiB)",
        "",
        "| T | softmax ms | softmax MiB | linear ms | linear MiB | hybrid ms | hybrid MiB | softmax / hybrid time |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for length in lengths:
        s, li, h = forward["softmax", length], forward["linear", length], forward["hybrid", length]
        mark = " (est.)" if s.get("estimated") else ""
        softmax_mib = "—" if s.get("estimated") else f"{s['peak_mib']:.0f}"
        lines.append(
            f"| {length:,} | {s['seconds'] * 1e3:,.1f}{mark} | {softmax_mib} | {li['seconds'] * 1e3:,.1f} | "
            f"{li['peak_mib']:.0f} | {h['seconds'] * 1e3:,.1f} | {h['peak_mib']:.0f} | "
            f"{s['seconds'] / h['seconds']:.2f}{mark} |"
        )
    lines += [
        "",
        "## Decode: one token's attention at context length L (µs) and the 30-layer state (MiB)",
        "",
        "| L | KV-cache step µs | linear step µs | hybrid step µs | KV cache / hybrid time | KV cache MiB | "
        "linear state MiB | hybrid state MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for length, d in decode.items():
        lines.append(
            f"| {length:,} | {d['softmax'] * 1e6:,.0f} | {d['linear'] * 1e6:,.0f} | {d['hybrid'] * 1e6:,.0f} | "
            f"{d['softmax'] / d['hybrid']:.2f} | {d['softmax_bytes'] / 2**20:,.1f} | "
            f"{d['linear_bytes'] / 2**20:.1f} | {d['hybrid_bytes'] / 2**20:.1f} |"
        )
    prefill_cross = crossover(
        lengths, [forward["softmax", t]["seconds"] for t in lengths], [forward["hybrid", t]["seconds"] for t in lengths]
    )
    decode_cross = crossover(
        decode_lengths, [d["softmax"] for d in decode.values()], [d["hybrid"] for d in decode.values()]
    )
    lines += ["", "## Summary", "", f"- prefill crossover (hybrid faster than softmax): {prefill_cross}"]
    lines.append(f"- decode crossover (hybrid step faster than the KV-cache step): {decode_cross}")
    for length in (16384, 65536):
        if length in lengths:
            s, h = forward["softmax", length], forward["hybrid", length]
            mark = " (softmax extrapolated)" if s.get("estimated") else ""
            lines.append(f"- prefill softmax / hybrid at {length:,}: {s['seconds'] / h['seconds']:.1f}×{mark}")
        if length in decode:
            d = decode[length]
            lines.append(
                f"- decode KV-cache / hybrid step at {length:,}: {d['softmax'] / d['hybrid']:.1f}× time, "
                f"{d['softmax_bytes'] / d['hybrid_bytes']:.0f}× state memory"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument(
        "--decode-lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
    )
    parser.add_argument("--softmax-max", type=int, default=16384, help="longest T run with softmax attention")
    parser.add_argument("--steps", type=int, default=50, help="decode steps timed per length")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--measure-one", nargs=3, metavar=("METHOD", "T", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_one:
        method, length, repeats = args.measure_one
        print(json.dumps(measure_forward(method, int(length), int(repeats))))
        return
    table = run(args.lengths, args.decode_lengths, args.softmax_max, args.steps)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)


if __name__ == "__main__":
    main()
