"""Load test of the web app: concurrent chat clients over loopback HTTP, each in its own session.

Starts the real app in this process (teacher, SQLite, the fixture repo indexed as a collection), then:
1. baseline: one client asking questions one after another;
2. N concurrent clients (gradio_client, one session each) asking for a bounded time, once with the queue
   taking turns token by token (round-robin over up to 4 answers) and once first-come-first-served.
Reported per phase: requests, failures, lost requests (submitted without a final answer), p50/p99
time to first token, per-answer decode tokens/s and total tokens/s; ratios against the baseline.

    python -m bench.load [--clients 8] [--seconds 60] [--max-new-tokens 24]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "load.md"
FIXTURE = REPO / "tests" / "app" / "fixture_repo"
QUESTIONS = ["Which port does the Kettle web service listen on?", "How long does green tea steep?",
             "What is the late fee rate?", "Which environment variable holds the token?",
             "When is the database backed up?", "How hot is the water for oolong tea?"]


@dataclass
class Phase:
    name: str
    clients: int
    wall_s: float = 0.0
    submitted: int = 0
    failed: list[str] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    decode_rates: list[float] = field(default_factory=list)
    tokens: int = 0

    @property
    def completed(self) -> int:
        return len(self.ttft)

    @property
    def lost(self) -> int:
        return self.submitted - self.completed - len(self.failed)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def client_loop(url: str, phase: Phase, deadline: float, requests: int | None, max_new_tokens: int,
                lock: threading.Lock, index: int) -> None:
    """Ask questions in one session until the deadline (or `requests` answers); record each answer."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    session = client.predict(title=f"load {phase.name} {index}", collection="kettle", api_name="/create_session")
    asked = 0
    while time.monotonic() < deadline and (requests is None or asked < requests):
        question = QUESTIONS[(index + asked) % len(QUESTIONS)]
        asked += 1
        with lock:
            phase.submitted += 1
        started = time.perf_counter()
        first = None
        try:
            final = None
            for update in client.submit(session_id=session["id"], message=question,
                                        max_new_tokens=max_new_tokens, api_name="/ask"):
                if first is None and update.get("text"):
                    first = time.perf_counter() - started
                if update.get("done"):
                    final = update
            if final is None:
                raise RuntimeError("the stream ended without a final answer")
        except Exception as exc:  # counted and reported, never hidden
            with lock:
                phase.failed.append(f"{type(exc).__name__}: {exc}")
            continue
        decode_s = final["seconds"] - (final["first_token_s"] or final["seconds"])
        with lock:
            phase.ttft.append(first if first is not None else time.perf_counter() - started)
            phase.tokens += final["answer_tokens"]
            if decode_s > 0 and final["answer_tokens"] > 1:
                phase.decode_rates.append((final["answer_tokens"] - 1) / decode_s)


def run_phase(url: str, name: str, clients: int, seconds: float, requests: int | None,
              max_new_tokens: int) -> Phase:
    phase, lock = Phase(name, clients), threading.Lock()
    started = time.perf_counter()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=client_loop, args=(url, phase, deadline, requests, max_new_tokens, lock, i))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.wall_s = time.perf_counter() - started
    return phase


def row(phase: Phase, base: Phase) -> str:
    p50, p99 = percentile(phase.ttft, 0.5), percentile(phase.ttft, 0.99)
    rate = statistics.median(phase.decode_rates) if phase.decode_rates else float("nan")
    total = phase.tokens / phase.wall_s
    base_rate = statistics.median(base.decode_rates) if base.decode_rates else float("nan")
    return (f"| {phase.name} | {phase.clients} | {phase.submitted} | {phase.completed} | {len(phase.failed)} | "
            f"{phase.lost} | {p50:.2f} | {p99:.2f} | {p50 / percentile(base.ttft, 0.5):.2f} | {rate:.1f} | "
            f"{rate / base_rate:.2f} | {total:.1f} | {total / (base.tokens / base.wall_s):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="Duration of each concurrent phase.")
    parser.add_argument("--baseline-requests", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    import socket

    from app.chat.models import ModelRegistry
    from app.config import Settings, get_settings
    from app.engine import ChatEngine
    from ui.server import launch

    work = Path(tempfile.mkdtemp(prefix="rillet-load-"))
    shutil.copytree(FIXTURE, work / "folders" / "kettle")
    settings = Settings(data_dir=work / "data", model="teacher", allowed_roots=[work / "folders"])
    registry = ModelRegistry(settings)
    configured = get_settings()  # the user's model cache, so the GGUF is not converted again
    from backbone.loader import load_model

    registry.adopt("teacher", load_model("teacher", gguf_path=configured.model_path, cache_dir=configured.cache_dir))
    engine = ChatEngine(settings, registry=registry)
    engine.index_folder(str(work / "folders" / "kettle"), "kettle")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(engine, "127.0.0.1", port, block=False)
    url = f"http://127.0.0.1:{port}/"
    load_before = os.getloadavg()[0]
    try:
        run_phase(url, "warm-up", 1, 60, 1, 4)
        base = run_phase(url, "baseline: 1 client", 1, 1e9, args.baseline_requests, args.max_new_tokens)
        registry.scheduler.max_active = 4
        shared = run_phase(url, f"{args.clients} clients, round-robin (4 at a time)", args.clients, args.seconds,
                           None, args.max_new_tokens)
        registry.scheduler.max_active = 1
        fifo = run_phase(url, f"{args.clients} clients, first come first served", args.clients, args.seconds,
                         None, args.max_new_tokens)
    finally:
        demo.close()
        engine.close()
        registry.close()
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()[0]

    header = ("| phase | clients | requests | answered | failed | lost | TTFT p50 s | TTFT p99 s | p50 / baseline "
              "| decode tok/s (median) | / baseline | total tok/s | / baseline |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    table = "\n".join([header, row(base, base), row(shared, base), row(fifo, base)])
    failures = [f"- {phase.name}: {message}" for phase in (base, shared, fifo) for message in phase.failed[:5]]
    report = (f"# Load test: concurrent chat clients on loopback\n\n"
              f"Command: `python -m bench.load --clients {args.clients} --seconds {args.seconds:g} "
              f"--max-new-tokens {args.max_new_tokens}`. Teacher (float32, CPU), SQLite, the fixture repo "
              f"(4 files) as the collection, top-k 4; each client has its own session, so later questions also "
              f"read the earlier turns. Every request goes through gradio_client over HTTP.\n"
              f"Load average (1 min) on this shared 2-core machine: {load_before:.1f} before, "
              f"{load_after:.1f} after.\nBaseline: one client alone, measured in the same run. TTFT is measured "
              f"by the client, from submitting to the first text; decode tok/s per answer after its first token."
              f"\n\n{table}\n" + ("\nFailures:\n" + "\n".join(failures) + "\n" if failures else ""))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
