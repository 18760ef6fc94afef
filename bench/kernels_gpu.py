"""Linear-attention kernels on a CUDA GPU: the Triton kernels against the PyTorch chunked path (the baseline)
and causal softmax attention (PyTorch SDPA), one layer of SmolLM2's shape, float32.

- prefill: linear attention over T tokens (features of 128, values of 64) per backend, and the whole hybrid
  layer (sinks, window, linear part) with its linear part on each backend; SDPA for scale;
- decode: one token's linear-attention step (state update and read-out) per backend.
Every backend is first checked against a float64 reference on fresh random inputs (relative RMS), then timed
with `triton.testing.do_bench` (median of CUDA-event timings). Writes bench/results/kernels_gpu.md.

    python -m bench.kernels_gpu [--lengths 1024 4096 16384 65536] [--batches 1 8]
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from backbone.attention import HybridAttention, LinearState, naive_linear_attention
from backbone.attention.dispatch import linear_attention, linear_decode_step

HEADS, KV_HEADS, HEAD_DIM, FEATURES = 9, 3, 64, 128
RESULTS = Path(__file__).parent / "results" / "kernels_gpu.md"


def _features(batch: int, heads: int, length: int, generator: torch.Generator) -> torch.Tensor:
    return F.elu(torch.randn(batch, heads, length, FEATURES, generator=generator, device="cuda")) + 1


def _linear_inputs(batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    q, k = _features(batch, HEADS, length, generator), _features(batch, KV_HEADS, length, generator)
    v = torch.randn(batch, KV_HEADS, length, HEAD_DIM, generator=generator, device="cuda")
    return q, k, v


def _relative_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double().cpu(), expected.double().cpu()
    return float((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt())


def check(decay: torch.Tensor) -> dict[str, float]:
    """Relative RMS of each backend against float64 on the CPU, prefill (T=1000, batch 2) and a step."""
    q, k, v = _linear_inputs(2, 1001, seed=7)
    expected, _ = naive_linear_attention(q[:, :, :1000].double().cpu(), k[:, :, :1000].double().cpu(),
                                             v[:, :, :1000].double().cpu(), decay=decay.double().cpu())  # fmt: skip
    whole, _ = naive_linear_attention(q.double().cpu(), k.double().cpu(), v.double().cpu(), decay=decay.double().cpu())
    errors = {}
    for backend in ("torch", "triton"):
        out, final = linear_attention(q[:, :, :1000], k[:, :, :1000], v[:, :, :1000], decay=decay, backend=backend)
        errors[f"prefill {backend}"] = _relative_rms(out, expected)
        step = LinearState(final.kv.contiguous(), final.k_sum.contiguous())
        out1, _ = linear_decode_step(q[:, :, 1000], k[:, :, 1000], v[:, :, 1000], step, decay=decay, backend=backend)
        errors[f"step {backend}"] = _relative_rms(out1, whole[:, :, 1000])
    return errors


def time_prefill(batch: int, length: int, decay: torch.Tensor) -> dict[str, float]:
    q, k, v = _linear_inputs(batch, length, seed=length)
    queries = torch.randn(batch, HEADS, length, HEAD_DIM, device="cuda")
    keys = torch.randn(batch, KV_HEADS, length, HEAD_DIM, device="cuda")
    hybrid = HybridAttention(HEADS, KV_HEADS, HEAD_DIM, decay_horizon=1024.0).cuda()
    times = {}
    with torch.no_grad():
        for backend in ("torch", "triton"):
            times[f"linear {backend}"] = do_bench(lambda b=backend: linear_attention(q, k, v, decay=decay, backend=b),
                                                  return_mode="median")  # fmt: skip
            hybrid.backend = backend
            times[f"hybrid {backend}"] = do_bench(lambda: hybrid(queries, keys, v), return_mode="median")
        # key/value heads repeated: with enable_gqa, float32 SDPA falls back to the T×T math path
        wide_k, wide_v = keys.repeat_interleave(HEADS // KV_HEADS, 1), v.repeat_interleave(HEADS // KV_HEADS, 1)
        times["softmax sdpa"] = do_bench(
            lambda: F.scaled_dot_product_attention(queries, wide_k, wide_v, is_causal=True), return_mode="median")
    return times


def time_step(batch: int, decay: torch.Tensor) -> dict[str, float]:
    q, k, v = _linear_inputs(batch, 1, seed=3)
    state = LinearState(torch.randn(batch, KV_HEADS, FEATURES, HEAD_DIM, device="cuda"),
                        torch.rand(batch, KV_HEADS, FEATURES, device="cuda") + 1)  # fmt: skip
    times = {}
    for backend in ("torch", "triton"):
        times[f"step {backend}"] = do_bench(
            lambda b=backend: linear_decode_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], state, decay=decay, backend=b),
            return_mode="median")  # fmt: skip
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.kernels_gpu needs a CUDA device; the CPU figures are in bench.attention")
    decay = torch.linspace(0.999, 0.9999, KV_HEADS, device="cuda")
    errors = check(decay)
    rows = [(b, t, time_prefill(b, t, decay)) for b in args.batches for t in args.lengths]
    steps = [(b, time_step(b, decay)) for b in args.batches]

    device = torch.cuda.get_device_name()
    lines = [f"# Linear-attention kernels on {device}", "",
             f"`python -m bench.kernels_gpu` · torch {torch.__version__} · {platform.python_version()} · float32 · "
             f"{HEADS} query heads, {KV_HEADS} key/value heads, features {FEATURES}, values {HEAD_DIM}", "",
             "Relative RMS against float64 (batch 2, 1,000 tokens, then one step):", "",
             "| backend | error |", "| --- | --- |",
             *[f"| {name} | {error:.1e} |" for name, error in errors.items()], "",
             "Prefill, milliseconds (median), and the PyTorch chunked path's time over Triton's:", "",
             "| batch | T | linear torch | linear triton | speed-up | hybrid torch | hybrid triton | speed-up "
             "| softmax SDPA |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for batch, length, t in rows:
        lines.append(
            f"| {batch} | {length:,} | {t['linear torch']:.3f} | {t['linear triton']:.3f} | "
            f"{t['linear torch'] / t['linear triton']:.2f}× | {t['hybrid torch']:.3f} | {t['hybrid triton']:.3f} | "
            f"{t['hybrid torch'] / t['hybrid triton']:.2f}× | {t['softmax sdpa']:.3f} |"
        )
    lines += ["", "Decode step (one token, one layer), microseconds (median):", "",
              "| batch | torch | triton | speed-up |", "| --- | --- | --- | --- |",
              *[f"| {b} | {1000 * t['step torch']:.1f} | {1000 * t['step triton']:.1f} | "
                f"{t['step torch'] / t['step triton']:.2f}× |" for b, t in steps]]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
