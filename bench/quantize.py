"""Inference precision: which int8 route is fastest on this CPU, and what int8 and bf16 weights cost in quality.

Routes (`routes`): one decoded token's matrix products at SmolLM2's shapes (30 layers of fused q/k/v,
o, fused gate/up and down, plus the 49,152 × 576 LM head), one thread, CPU time, each route timed in
alternating rounds, best round kept: float32 `F.linear` (the baseline), bfloat16 `F.linear`, the compiled
int8-weight, float32-activation product of backbone/kernels/cpu_step.py (what `RILLET_PRECISION=int8` uses
for one row), fbgemm's dynamic int8 linear (what it uses for prompts on a CPU with VNNI), `torch._int_mm` on
int8 rows and the `_weight_int8pack_mm` weight-only kernel.

Decoding step (`step`): the int8 student's greedy decoding after a 256-token prompt, ms per token, through
the PyTorch step (every op dispatched on its own, the products through the same compiled matrix-vector
kernel) and through the compiled step (backbone/kernels/cpu_step.py) at 1 and 2 threads; alternating rounds, best kept.
It chooses `STEP_THREADS` in backbone/fast_decode.py.

Quality (`quality`): perplexity @2,048 of teacher and student at each precision, on WikiText-2 test (first
4,096 tokens, from the shared data) and on Vim's user manual (8,192 tokens, held out from training and
choices), both read through the prompt path, whose rows int8 maps to their own ranges like a decoding step.

    python -m bench.quantize [--sections routes,step,quality] [--precisions fp32,bf16,int8] [--rounds 5]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from backbone.evaluate import perplexity
from backbone.loader import load_model
from backbone.quantize import Int8Linear, quantize_rows, reduced_activation_range
from bench import write_keeping_notes

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "quantize.md"
CACHE = REPO / ".data" / "cache"
# (out, in) of one layer's products after fusion, and the LM head.
LAYER_SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536))
HEAD_SHAPE = (49152, 576)
LAYERS = 30


def token_products() -> dict[str, Callable[[], None]]:
    """For each route, a function that runs one token's products (weights made once, as a model holds them)."""
    generator = torch.Generator().manual_seed(0)
    shapes = [shape for _ in range(LAYERS) for shape in LAYER_SHAPES] + [HEAD_SHAPE]
    weights = [torch.randn(shape, generator=generator) * 0.05 for shape in shapes]
    inputs = {features: torch.randn(1, features, generator=generator) for features in (576, 1536)}
    bf16 = [w.bfloat16() for w in weights]
    int8 = [Int8Linear.from_float(w) for w in weights]
    rows = [quantize_rows(w) for w in weights]
    transposed = [(r.t().contiguous(), s) for r, s in rows]
    reduce_range = reduced_activation_range()
    packed = [torch.ops.quantized.linear_prepack(torch._make_per_channel_quantized_tensor(
        r, s.double(), torch.zeros(len(s), dtype=torch.long), 0), None) for r, s in rows]
    x_int8 = {k: torch.round(v / v.abs().max() * 127).to(torch.int8) for k, v in inputs.items()}

    def run(product: Callable[[int, torch.Tensor], object]) -> Callable[[], None]:
        def token() -> None:
            for index, weight in enumerate(weights):
                product(index, inputs[weight.shape[1]])
        return token

    routes = {
        "float32 F.linear": run(lambda i, x: F.linear(x, weights[i])),
        "bfloat16 F.linear": run(lambda i, x: F.linear(x.bfloat16(), bf16[i])),
        "int8 weights, compiled matvec (used)": run(lambda i, x: int8[i](x)),
        "int8 fbgemm dynamic": run(lambda i, x: torch.ops.quantized.linear_dynamic(x, packed[i], reduce_range)),
        "int8 torch._int_mm": run(lambda i, x: torch._int_mm(x_int8[x.shape[1]], transposed[i][0])),
    }
    if hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        routes["int8 weight-only _weight_int8pack_mm"] = run(
            lambda i, x: torch.ops.aten._weight_int8pack_mm(x, rows[i][0], rows[i][1]))
    return routes


def routes_section(rounds: int) -> list[str]:
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        routes = token_products()
    best = dict.fromkeys(routes, float("inf"))
    with torch.inference_mode():
        for fn in routes.values():
            fn()  # warm-up
        for _ in range(rounds):
            for name, fn in routes.items():
                started = time.thread_time()
                fn()
                best[name] = min(best[name], time.thread_time() - started)
    base = best["float32 F.linear"]
    rows = ["| route | ms per token (CPU) | speed-up over float32 |", "| --- | ---: | ---: |"]
    rows += [f"| {name} | {1e3 * t:.1f} | {base / t:.2f}× |" for name, t in best.items()]
    print("\n".join(rows), flush=True)
    return ["## One token's 121 matrix products, 1 thread", "",
            f"Best of {rounds} alternating rounds. Weights stream from memory, so these times move with what "
            "else the machine runs; the ratios are what to read.", "", *rows]


def step_section(rounds: int, tokens: int = 48) -> list[str]:
    import numba

    from bench.llama_cpp import prompt_text

    model = load_model("student", cache_dir=CACHE, precision="int8")
    compiled = model.fast_step
    if compiled is None:
        return ["## Decoding step", "", "The compiled step does not apply here (numba missing, or no int8)."]
    ids = model.tokenizer.encode(prompt_text(256 * 8))[:256]
    routes = {"PyTorch step (one op at a time; products compiled), 2 threads": (None, "torch", 2),
              "compiled step, 1 thread": (compiled, "auto", 1), "compiled step, 2 threads": (compiled, "auto", 2)}
    best = dict.fromkeys(routes, float("inf"))
    with torch.inference_mode():
        for round_index in range(rounds + 1):  # round 0 warms every route up
            for name, (step, backend, threads) in routes.items():
                os.environ["RILLET_ATTENTION_BACKEND"] = backend
                torch.set_num_threads(threads)
                compiled.threads = threads
                model.fast_step = step
                state = model.new_state()
                token = int(model.prefill(ids, state).argmax())
                for _ in range(4):
                    token = int(model.step(token, state).argmax())
                started = time.perf_counter()
                for _ in range(tokens):
                    token = int(model.step(token, state).argmax())
                if round_index:
                    best[name] = min(best[name], (time.perf_counter() - started) / tokens)
    os.environ.pop("RILLET_ATTENTION_BACKEND")
    base = best[next(iter(routes))]
    rows = ["| route | ms per token | tokens/s | speed-up |", "| --- | ---: | ---: | ---: |"]
    rows += [f"| {name} | {1e3 * t:.1f} | {1 / t:.1f} | {base / t:.2f}× |" for name, t in best.items()]
    print("\n".join(rows), flush=True)
    return ["## The int8 student's decoding step", "",
            f"256-token prompt, {tokens} greedy tokens timed after 4, best of {rounds} alternating rounds "
            f"(wall clock). Numba {numba.__version__}, threading layer {numba.threading_layer()}.", "", *rows]


def texts(tokenizer) -> dict[str, torch.Tensor]:
    from bench import shared_file
    from bench.heldout import CHAPTERS, vim_manual

    wikitext = shared_file("text/wikitext2_test.txt").read_text(encoding="utf-8")
    return {"WikiText-2 test (4,096 tokens)": torch.tensor(tokenizer.encode(wikitext[: 4096 * 8])[:4096]),
            "Vim manual, held out (8,192 tokens)": torch.tensor(tokenizer.encode(vim_manual(CHAPTERS))[:8192])}


def quality_section(precisions: list[str]) -> list[str]:
    torch.set_num_threads(2)
    measured: dict[tuple[str, str], dict[str, float]] = {}
    ids = None
    for kind in ("teacher", "student"):
        for precision in precisions:
            model = load_model(kind, cache_dir=CACHE, precision=precision)
            ids = ids or texts(model.tokenizer)
            with torch.inference_mode():
                measured[kind, precision] = {name: perplexity(model.model, t, 2048) for name, t in ids.items()}
            print(kind, precision, measured[kind, precision], flush=True)
            del model
    names = list(ids)
    rows = ["| model | precision | " + " | ".join(f"ppl @2,048, {n} | vs fp32" for n in names) + " |",
            "| --- | --- | " + " | ".join("---: | ---:" for _ in names) + " |"]
    for (kind, precision), values in measured.items():
        base = measured.get((kind, "fp32"))
        cells = " | ".join(f"{values[n]:.2f} | " + (f"{values[n] / base[n] - 1:+.2%}" if base else "—") for n in names)
        rows.append(f"| {kind} | {precision} | {cells} |")
    print("\n".join(rows), flush=True)
    return ["## Perplexity by precision", "", *rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="routes,step,quality")
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sections = args.sections.split(",")
    lines = ["# Inference precision: int8 routes and quality", "",
             f"Command: `python -m bench.quantize {' '.join(sys.argv[1:])}`. torch {torch.__version__}. Load average "
             f"(1 min) on this shared 2-core machine at the start: {os.getloadavg()[0]:.1f}.", ""]
    if "routes" in sections:
        lines += [*routes_section(args.rounds), ""]
    if "step" in sections:
        lines += [*step_section(args.rounds), ""]
    if "quality" in sections:
        lines += quality_section(args.precisions.split(","))
    write_keeping_notes(RESULTS, lines)


if __name__ == "__main__":
    main()
