"""Load test of the OpenAI-compatible API: concurrent clients over loopback HTTP, each in its own session.

Starts the real app in this process (the configured model, student by default; SQLite; the fixture repo
indexed as a collection), then asks with the official `openai` client, streaming:
1. baseline: one client asking questions one after another;
2. N concurrent clients (16 by default) asking for a fixed time.
Each client continues a session of its own through `rillet.session_id` and retrieves from the collection.
Reported per phase: requests, answered, failed, lost (sent without a final answer), p50/p99 time to
first token, per-answer decode tokens/s and total tokens/s; ratios against the baseline.

    python -m bench.load [--clients 16] [--seconds 60] [--max-new-tokens 24] [--model student]
"""

from __future__ import annotations

import os

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


def client_loop(url: str, session_id: int, model: str, phase: Phase, deadline: float, requests: int | None,
                max_new_tokens: int, lock: threading.Lock, index: int) -> None:
    """Ask questions in one session until the deadline (or `requests` answers); record each answer."""
    import openai

    client = openai.OpenAI(base_url=f"{url}v1", api_key="loopback", timeout=600, max_retries=0)
    asked = 0
    while time.monotonic() < deadline and (requests is None or asked < requests):
        question = QUESTIONS[(index + asked) % len(QUESTIONS)]
        asked += 1
        with lock:
            phase.submitted += 1
        started = time.perf_counter()
        first = last = None
        usage = finish = None
        try:
            stream = client.chat.completions.create(
                model=model, stream=True, stream_options={"include_usage": True}, max_tokens=max_new_tokens,
                messages=[{"role": "user", "content": question}], extra_body={"rillet": {"session_id": session_id}})
            for chunk in stream:
                now = time.perf_counter() - started
                if chunk.choices and chunk.choices[0].delta.content:
                    first = now if first is None else first
                    last = now
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
                if chunk.usage:
                    usage = chunk.usage
            if finish is None or usage is None:
                raise RuntimeError("the stream ended without a finish reason and usage")
        except Exception as exc:  # counted and reported, never hidden
            with lock:
                phase.failed.append(f"{type(exc).__name__}: {exc}")
            continue
        with lock:
            phase.ttft.append(first if first is not None else time.perf_counter() - started)
            phase.tokens += usage.completion_tokens
            if first is not None and last is not None and last > first and usage.completion_tokens > 1:
                phase.decode_rates.append((usage.completion_tokens - 1) / (last - first))


def run_phase(url: str, sessions: list[int], model: str, name: str, seconds: float, requests: int | None,
              max_new_tokens: int) -> Phase:
    phase, lock = Phase(name, len(sessions)), threading.Lock()
    started = time.perf_counter()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=client_loop, args=(url, session, model, phase, deadline, requests,
                                                          max_new_tokens, lock, i))
               for i, session in enumerate(sessions)]
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
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0, help="Duration of the concurrent phase.")
    parser.add_argument("--baseline-requests", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--model", choices=["student", "teacher"], default="student")
    args = parser.parse_args()

    import socket

    from app.chat.models import ModelRegistry
    from app.config import Settings, get_settings
    from app.engine import ChatEngine
    from ui.server import launch

    work = Path(tempfile.mkdtemp(prefix="rillet-load-"))
    shutil.copytree(FIXTURE, work / "folders" / "kettle")
    settings = Settings(data_dir=work / "data", model=args.model, allowed_roots=[work / "folders"])
    registry = ModelRegistry(get_settings(model=args.model))  # the user's model caches: no new calibration
    engine = ChatEngine(settings, registry=registry)
    served = engine.served(args.model)
    engine.index_folder(str(work / "folders" / "kettle"), "kettle")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(engine, "127.0.0.1", port, block=False)
    url = f"http://127.0.0.1:{port}/"

    def sessions(count: int, name: str) -> list[int]:
        return [engine.create_session(f"load {name} {i}", "kettle").id for i in range(count)]

    load_before = os.getloadavg()[0]
    try:
        run_phase(url, sessions(1, "warm-up"), args.model, "warm-up", 300, 1, 4)
        base = run_phase(url, sessions(1, "baseline"), args.model, "baseline: 1 client", 1e9,
                         args.baseline_requests, args.max_new_tokens)
        crowd = run_phase(url, sessions(args.clients, "crowd"), args.model, f"{args.clients} clients",
                          args.seconds, None, args.max_new_tokens)
    finally:
        demo.close()
        engine.close()
        registry.close()
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()[0]

    header = ("| phase | clients | requests | answered | failed | lost | TTFT p50 s | TTFT p99 s | p50 / baseline "
              "| decode tok/s (median) | / baseline | total tok/s | / baseline |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    table = "\n".join([header, row(base, base), row(crowd, base)])
    failures = [f"- {phase.name}: {message}" for phase in (base, crowd) for message in phase.failed[:5]]
    report = (f"# Load test: concurrent clients of the OpenAI-compatible API on loopback\n\n"
              f"Command: `python -m bench.load --clients {args.clients} --seconds {args.seconds:g} "
              f"--max-new-tokens {args.max_new_tokens} --model {args.model}`. Model: {served.label} "
              f"({served.device}, {served.precision}); SQLite; the fixture repo (4 files) as the collection, top-k "
              f"4. Each client is the official `openai` client streaming `POST /v1/chat/completions` over HTTP and "
              f"continues a session of its own (`rillet.session_id`), so later questions also read the earlier "
              f"turns from the saved state. The scheduler answers up to 4 at a time, token by token; the rest "
              f"wait in line.\nLoad average (1 min) on this shared 2-core machine: {load_before:.1f} before, "
              f"{load_after:.1f} after.\nBaseline: one client alone, measured in the same run. TTFT is measured "
              f"by the client, from sending to the first text; decode tok/s per answer after its first token; "
              f"lost = sent without a final answer."
              f"\n\n{table}\n" + ("\nFailures:\n" + "\n".join(failures) + "\n" if failures else ""))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
