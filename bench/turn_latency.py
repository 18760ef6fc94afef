"""What a user waits for in one chat turn: retrieval, prefill, first token, answer and commit, by model.

The engine's real turn (app/engine.py) on a session already about 4,000 tokens long, with 4 passages
(about 1,000 tokens) retrieved from a collection of Python standard-library source and a 30-token
question. Baseline in the same run: the teacher, on the same session and question, alternating rounds.
Resident memory is read from the process (current and peak) after the turn.

`--serve` measures the same turn as a user of the web app meets it: the collection and the session are
prepared in the bench's process, then a real `rillet serve` process is started on that data directory and
the turn is asked through its HTTP API (gradio_client), timed on the client's side. Its resident memory is
the server's own, peak over its whole life (loading included), so it bounds what a turn needs.

Times (seconds from the question being asked): retrieval = until the passages are chosen; first token =
until the first answer text; commit = from the last answer token to the stored turn (the turn re-read into
the session's state and saved with its snapshot).

    python -m bench.turn_latency [--models student,teacher] [--rounds 2] [--precision auto] [--threads 2]
    python -m bench.turn_latency --serve [--models student]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import resource
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from bench import write_keeping_notes

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "turn_latency.md"
SERVED_RESULTS = REPO / "bench" / "results" / "turn_latency_serve.md"
HISTORY_TOKENS = 4000
QUESTION = ("How does the JSON decoder report the line and column of a syntax error, and which exception "
            "class does it raise?")


def history_messages(tokenizer, target: int) -> list[dict[str, str]]:
    """User/assistant turns of standard-library prose (docstrings) adding up to about `target` tokens."""
    import inspect
    import textwrap

    paragraphs = [p.strip() for p in (inspect.getdoc(textwrap) or "").split("\n\n") if p.strip()]
    paragraphs += [inspect.getdoc(f) or "" for _, f in inspect.getmembers(textwrap, inspect.isfunction)]
    paragraphs += [inspect.getdoc(inspect) or "", inspect.getdoc(inspect.signature) or ""]
    messages, used, index = [], 0, 0
    while used < target:
        text = paragraphs[index % len(paragraphs)] or "Tell me more."
        role = "user" if len(messages) % 2 == 0 else "assistant"
        messages.append({"role": role, "text": text})
        used += len(tokenizer.encode(text)) + 8
        index += 1
    if len(messages) % 2:
        messages.append({"role": "assistant", "text": "I see."})
    return messages


COLLECTION_FOLDER = Path(sysconfig.get_paths()["stdlib"]) / "json"
OPTIONS = {"top_k": 4, "source_tokens": 1000, "max_new_tokens": 64}


def prepare(engine, model_name: str) -> int:
    """Index the collection and import the long session; its id."""
    engine.index_folder(str(COLLECTION_FOLDER), "stdlib-json")
    session = engine.create_session("latency", collection="stdlib-json")
    exported = engine.store.export_json(session.id)
    exported["messages"] = history_messages(engine.served(model_name).model.tokenizer, HISTORY_TOKENS)
    return engine.import_session(json.dumps(exported)).id


def measure(model_name: str, precision: str, threads: int) -> dict[str, float]:
    """One turn in this process: a fresh data directory, the collection, the long session, the question."""
    from app.chat.events import Finished, Piece, Retrieved
    from app.config import get_settings
    from app.engine import ChatEngine, TurnOptions

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as data:
        settings = get_settings(data_dir=Path(data), model=model_name, precision=precision,
                                allowed_roots=[COLLECTION_FOLDER.parent])
        engine = ChatEngine(settings)
        try:
            imported = engine.session(prepare(engine, model_name))
            view = engine.open_session(imported.id)  # re-reads the transcript into a state: not timed
            options = TurnOptions(**OPTIONS)
            started = time.perf_counter()
            retrieved = first = last = None
            result = None
            prompt_tokens = 0
            for event in engine.ask(imported.id, QUESTION, options):
                now = time.perf_counter() - started
                if isinstance(event, Retrieved):
                    retrieved, prompt_tokens = now, event.prompt_tokens
                elif isinstance(event, Piece) and event.text:
                    first = first if first is not None else now
                    last = now
                elif isinstance(event, Finished):
                    result = event.result
                    done = now
            if result is None or first is None:
                raise RuntimeError(f"{model_name}: the turn did not finish with an answer")
            return {"session_tokens": float(view.state_tokens),
                    "prompt_tokens": float(prompt_tokens), "retrieval_s": retrieved or 0.0,
                    "first_token_s": first, "answer_tokens": float(result.answer_tokens),
                    "decode_tps": (result.answer_tokens - 1) / max(last - first, 1e-9),
                    "commit_s": done - last, "total_s": done,
                    "rss_mb": int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        finally:
            engine.close()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def measure_served(model_name: str, precision: str, threads: int) -> dict[str, float]:
    """The turn through a real `rillet serve` on a prepared data directory, timed from the client."""
    import subprocess

    from gradio_client import Client

    from app.config import get_settings
    from app.engine import ChatEngine

    with tempfile.TemporaryDirectory() as data:
        environment = {**os.environ, "RILLET_DATA_DIR": data, "RILLET_MODEL": model_name,
                       "RILLET_PRECISION": precision,
                       "RILLET_ALLOWED_ROOTS": json.dumps([str(COLLECTION_FOLDER.parent)])}
        engine = ChatEngine(get_settings(data_dir=Path(data), model=model_name, precision=precision,
                                         allowed_roots=[COLLECTION_FOLDER.parent]))
        try:
            first_session = prepare(engine, model_name)
            exported = engine.store.export_json(first_session)
            session_id = engine.import_session(json.dumps(exported)).id  # the same conversation, asked second
        finally:
            engine.close()
        del engine
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], cwd=REPO,
                                  env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            client = None
            deadline = time.monotonic() + 600
            while client is None:
                if server.poll() is not None:
                    raise RuntimeError(f"rillet serve exited:\n{server.stderr.read()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("rillet serve did not answer within 10 minutes")
                try:
                    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                except Exception:
                    time.sleep(1)
            def turn(session: int) -> tuple[dict, float, dict]:
                """Open the session as the page does, ask; (opened, client's first token s, last update)."""
                opened = client.predict(session_id=session, api_name="/load_session")
                started, first, final = time.perf_counter(), None, {}
                for update in client.submit(session_id=session, message=QUESTION, top_k=OPTIONS["top_k"],
                                            max_new_tokens=OPTIONS["max_new_tokens"], api_name="/ask"):
                    if update.get("text") and first is None:
                        first = time.perf_counter() - started
                    if update.get("done"):
                        final = update
                if not final or first is None:
                    raise RuntimeError(f"{model_name}: the served turn did not finish with an answer")
                final["total_s"] = time.perf_counter() - started
                return opened, first, final

            _, cold_first, _ = turn(first_session)  # the server's first turn: indexes and embedder load
            opened, first, final = turn(session_id)
            return {"session_tokens": float(opened["state_tokens"]),
                    "prompt_tokens": float(final["prompt_tokens"]), "first_token_s": first,
                    "server_first_token_s": float(final["first_token_s"]), "cold_first_token_s": cold_first,
                    "answer_tokens": float(final["answer_tokens"]), "total_s": final["total_s"],
                    "rss_mb": _memory_mb(server.pid, "VmRSS"), "peak_rss_mb": _memory_mb(server.pid, "VmHWM")}
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def main() -> None:
    import subprocess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="student,teacher")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help="ask through a real `rillet serve` (its HTTP API)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker = measure_served if args.serve else measure
        print(json.dumps(worker(args.worker, args.precision, args.threads)))
        return
    models = args.models.split(",")
    best: dict[str, dict[str, float]] = {}
    for round_index in range(args.rounds):
        for name in models:
            command = ["--worker", name, "--precision", args.precision, "--threads", str(args.threads)]
            done = subprocess.run([sys.executable, "-m", "bench.turn_latency", *command,
                                   *(["--serve"] if args.serve else [])], cwd=REPO, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            found = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"round {round_index + 1} {name}: {found}", flush=True)
            if name not in best or found["first_token_s"] < best[name]["first_token_s"]:
                best[name] = found
    if args.serve:
        columns = [("prompt tokens", "prompt_tokens", "{:,.0f}"),
                   ("server's first turn: first token s", "cold_first_token_s", "{:.2f}"),
                   ("first token s (client)", "first_token_s", "{:.2f}"),
                   ("first token s (server)", "server_first_token_s", "{:.2f}"),
                   ("answer tokens", "answer_tokens", "{:.0f}"), ("total s", "total_s", "{:.2f}"),
                   ("server RSS MB", "rss_mb", "{:,.0f}"), ("server peak RSS MB", "peak_rss_mb", "{:,.0f}")]
    else:
        columns = [("prompt tokens", "prompt_tokens", "{:,.0f}"), ("retrieval s", "retrieval_s", "{:.2f}"),
                   ("first token s", "first_token_s", "{:.2f}"), ("answer tokens", "answer_tokens", "{:.0f}"),
                   ("decode tokens/s", "decode_tps", "{:.1f}"), ("commit s", "commit_s", "{:.2f}"),
                   ("total s", "total_s", "{:.2f}"), ("RSS MB", "rss_mb", "{:,.0f}"),
                   ("peak RSS MB", "peak_rss_mb", "{:,.0f}")]
    columns.insert(0, ("session tokens", "session_tokens", "{:,.0f}"))
    rows = ["| model | " + " | ".join(c for c, _, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, values in best.items():
        rows.append(f"| {name} | " + " | ".join(f.format(values[k]) for _, k, f in columns) + " |")
    if "student" in best and "teacher" in best:
        ratio = best["teacher"]["first_token_s"] / best["student"]["first_token_s"]
        rows += ["", f"Time to first token, teacher / student: {ratio:.2f}×."]
    print("\n".join(rows))
    heading = ("# One chat turn through `rillet serve`: what a user of the web app waits for" if args.serve else
               "# One chat turn: what a user waits for")
    served = (" Asked through the HTTP API of a `rillet serve` process (gradio_client), timed on the client, in "
              "a second copy of the session after the server's first turn (which also loads the collection's "
              "indexes and warms the embedder, shown apart); the server's peak RSS is over its whole life, "
              "loading included." if args.serve else "")
    write_keeping_notes(SERVED_RESULTS if args.serve else RESULTS, [
        heading, "",
        f"Command: `python -m bench.turn_latency {' '.join(sys.argv[1:])}`.{served} A session of about "
        f"{HISTORY_TOKENS:,} tokens, 4 passages (about 1,000 tokens) from the standard library's json package, "
        f"a 30-token question, 64 answer tokens at most; precision {args.precision}, {args.threads} threads; "
        f"the round with the earliest first token kept of {args.rounds}. Load average (1 min) on this shared "
        f"2-core machine after the run: {os.getloadavg()[0]:.1f}.", "", *rows])


if __name__ == "__main__":
    main()
