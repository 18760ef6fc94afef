"""What a user waits for in one chat turn: retrieval, prefill, first token, answer and commit, by model.

The engine's real turn (app/engine.py) on a session already about 4,000 tokens long, with 4 passages
(about 1,000 tokens) retrieved from a collection of Python standard-library source and a 30-token
question. Baseline in the same run: the teacher, on the same session and question, alternating rounds.
Resident memory is read from the process (current and peak) after the turn.

Times (seconds from the question being asked): retrieval = until the passages are chosen; first token =
until the first answer text; commit = from the last answer token to the stored turn (the turn re-read into
the session's state and saved with its snapshot).

    python -m bench.turn_latency [--models student,teacher] [--rounds 2] [--precision auto] [--threads 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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


def measure(model_name: str, precision: str, threads: int) -> dict[str, float]:
    """One turn in this process: a fresh data directory, the collection, the long session, the question."""
    from app.chat.events import Finished, Piece, Retrieved
    from app.config import get_settings
    from app.engine import ChatEngine, TurnOptions

    torch.set_num_threads(threads)
    folder = Path(sysconfig.get_paths()["stdlib"]) / "json"
    with tempfile.TemporaryDirectory() as data:
        settings = get_settings(data_dir=Path(data), model=model_name, precision=precision,
                                allowed_roots=[folder.parent])
        engine = ChatEngine(settings)
        try:
            engine.index_folder(str(folder), "stdlib-json")
            session = engine.create_session("latency", collection="stdlib-json")
            exported = engine.store.export_json(session.id)
            model = engine.served(model_name).model
            exported["messages"] = history_messages(model.tokenizer, HISTORY_TOKENS)
            imported = engine.import_session(json.dumps(exported))
            view = engine.open_session(imported.id)  # re-reads the transcript into a state: not timed
            options = TurnOptions(top_k=4, source_tokens=1000, max_new_tokens=64)
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


def main() -> None:
    import subprocess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="student,teacher")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.precision, args.threads)))
        return
    models = args.models.split(",")
    best: dict[str, dict[str, float]] = {}
    for round_index in range(args.rounds):
        for name in models:
            done = subprocess.run([sys.executable, "-m", "bench.turn_latency", "--worker", name, "--precision",
                                   args.precision, "--threads", str(args.threads)], cwd=REPO, capture_output=True,
                                  text=True)
            if done.returncode:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            found = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"round {round_index + 1} {name}: {found}", flush=True)
            if name not in best or found["first_token_s"] < best[name]["first_token_s"]:
                best[name] = found
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
    write_keeping_notes(RESULTS, [
        "# One chat turn: what a user waits for", "",
        f"Command: `python -m bench.turn_latency {' '.join(sys.argv[1:])}`. A session of about "
        f"{HISTORY_TOKENS:,} tokens, 4 passages (about 1,000 tokens) from the standard library's json package, "
        f"a 30-token question, 64 answer tokens at most; precision {args.precision}, {args.threads} threads; "
        f"the round with the earliest first token kept of {args.rounds}. Load average (1 min) on this shared "
        f"2-core machine after the run: {os.getloadavg()[0]:.1f}.", "", *rows])


if __name__ == "__main__":
    main()
