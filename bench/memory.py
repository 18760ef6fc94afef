"""Session memory: resuming a session from its saved state vs rebuilding it by re-reading the transcript.

For sessions of about 1k, 8k and 32k tokens (prose from the shared Paul Graham essays, cut into user and
assistant messages), in one run:
- re-read: `memory.transcript.replay` of the whole transcript (what resuming costs without a saved state;
  the baseline),
- resume: `SessionStore.load` with a current snapshot (read messages and blob, verify the checksum,
  decode, rebuild the state), median of several, checked bit-identical to the live state,
- save: `SessionStore.append_turn` of one short turn (encode the state, write two messages and the
  snapshot, prune, commit), median of several,
- the snapshot's bytes, and, at the shortest length, the same figures per codec (zstd, bfloat16).

Models: the trained student when `load_model("student")` works; otherwise the teacher (KV cache; it
cannot hold 32k tokens, so that row is n/a) and the student architecture with untrained parameters
(the same layers and the same constant-size state, so its timings stand for the student's; its text
quality is irrelevant here).

    python -m bench.memory [--lengths 1024,8192,32768] [--repeats 5] [--database-url URL] [--threads N]

`--controls` measures going back instead (its own section of the results, the rest kept): the session is
written turn by turn as the chat writes it (a snapshot after each turn, thinned by the snapshot policy), then
- regenerate: what the engine does around a new answer to the last question: the state before it restored
  (`SessionStore.state_at`: nearest snapshot plus a re-read of the gap), the question and the new answer
  read into it, and the answer stored (`replace_answer`); the decoding of the answer itself is left out
  (it costs what any answer costs),
- branch: `SessionStore.branch` into a new session, from before the last question (editing it) and from
  the middle of the session (the snapshot nearest before it, then the gap re-read),
each beside re-reading the whole transcript (the same calls as `replay`, timed as the session is written),
and each checked bit-identical to a replay of its transcript.

    python -m bench.memory --controls [--lengths 1024,8192,32768] [--repeats 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from backbone.generate import LanguageModel
from backbone.loader import load_model
from bench import shared_file, write_keeping_notes
from memory.codec import CodecOptions
from memory.db import make_engine
from memory.records import ChatMessage
from memory.sessions import SessionStore
from memory.transcript import feed, message_pieces, replay, with_system_prompt

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "memory.md"
SYSTEM = "You are Rillet, a careful assistant. Answer from the conversation and the cited sources."
WORDS_PER_MESSAGE = 120
CODECS = {"raw float32": CodecOptions(), "zstd": CodecOptions(compress=True),
          "bfloat16": CodecOptions(bfloat16=True), "bfloat16 + zstd": CodecOptions(compress=True, bfloat16=True)}


def essay_words() -> list[str]:
    return json.loads(shared_file("niah/PaulGrahamEssays.json").read_text())["text"].split()


def transcript(model: LanguageModel, words: list[str], tokens: int) -> tuple[list[ChatMessage], int]:
    """Alternating user/assistant messages whose rendered tokens (with the system prompt) stay within `tokens`."""
    count = lambda m: sum(len(p) for p in message_pieces(model.tokenizer, m.role, m.text))  # noqa: E731
    total = count(ChatMessage("system", SYSTEM))
    messages: list[ChatMessage] = []
    for start in range(0, len(words), WORDS_PER_MESSAGE):
        role = ("user", "assistant")[len(messages) % 2]
        message = ChatMessage(role, " ".join(words[start : start + WORDS_PER_MESSAGE]))
        if total + count(message) > tokens:
            break
        messages.append(message)
        total += count(message)
    if len(messages) % 2:
        total -= count(messages.pop())
    if not messages:
        raise SystemExit(f"{tokens} tokens cannot hold one turn of {WORDS_PER_MESSAGE}-word messages; "
                         "ask for longer sessions (--lengths).")
    return messages, total


def states_equal(a, b) -> bool:  # type: ignore[no-untyped-def]
    ta, tb = a.to_tensors(), b.to_tensors()
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@dataclass
class Row:
    model: str
    target: int
    tokens: int | None = None
    reread_s: float | None = None
    resume_ms: float | None = None
    save_ms: float | None = None
    snapshot_bytes: int | None = None
    exact: bool | None = None
    note: str = ""


def store_session(store: SessionStore, model: LanguageModel, messages: list[ChatMessage], state,  # type: ignore[no-untyped-def]
                  repeats: int) -> tuple[int, list[float]]:
    """A session holding `messages` and `state`; then `repeats` short turns, each save timed."""
    info = store.create("bench", system_prompt=SYSTEM)
    info = store.append_messages(info.id, messages[:-2])
    info = store.append_turn(info.id, messages[-2].text, messages[-1].text, state,
                             model_fingerprint=model.fingerprint, expected_version=info.version)
    saves = []
    for i in range(repeats):
        user, answer = f"Short question {i}?", f"Short answer {i}."
        feed(model, state, [ChatMessage("user", user), ChatMessage("assistant", answer)])
        started = time.perf_counter()
        info = store.append_turn(info.id, user, answer, state, model_fingerprint=model.fingerprint,
                                 expected_version=info.version)
        saves.append(time.perf_counter() - started)
    return info.id, saves


def resume(store: SessionStore, model: LanguageModel, session_id: int, live, repeats: int) -> tuple[float, bool]:  # type: ignore[no-untyped-def]
    """Median seconds of `load` from a current snapshot, and whether it rebuilt the live state exactly."""
    loaded = store.load(session_id, model, progress=False)  # warm-up
    if loaded.replayed_tokens:
        raise RuntimeError("the snapshot was not current: load re-read the transcript")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        store.load(session_id, model, progress=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times), states_equal(loaded.state, live)


def bench_model(name: str, model: LanguageModel, lengths: list[int], words: list[str], url: str,
                repeats: int) -> tuple[list[Row], list[tuple]]:
    rows, codec_rows = [], []
    engine = make_engine(url)
    store = SessionStore(engine)
    for target in lengths:
        limit = model.max_context
        if limit is not None and target > limit:
            rows.append(Row(name, target, note=f"n/a: past the {limit:,}-token context"))
            continue
        budget = target if limit is None else min(target, limit - 64)  # room for the short turns
        messages, tokens = transcript(model, words, budget)
        print(f"{name}: {tokens:,} tokens, re-reading the transcript...", flush=True)
        started = time.perf_counter()
        state, _ = replay(model, messages, SYSTEM, progress=True)
        reread = time.perf_counter() - started
        live = state.clone()  # `state` stays as re-read, for the codec sessions
        session_id, saves = store_session(store, model, messages, live, repeats)
        resume_s, exact = resume(store, model, session_id, live, repeats)
        size = store.snapshots(session_id)[-1].byte_size
        rows.append(Row(name, target, tokens, reread, resume_s * 1e3, statistics.median(saves) * 1e3, size, exact))
        print(f"  re-read {reread:.1f} s, resume {resume_s * 1e3:.1f} ms (x{reread / resume_s:,.0f}), "
              f"save {statistics.median(saves) * 1e3:.1f} ms, snapshot {size / 2**20:.1f} MiB, exact {exact}",
              flush=True)
        if target == lengths[0]:  # a recurrent state has the same size at any length
            for codec_name, codec in CODECS.items():
                variant = SessionStore(engine, codec=codec)
                copy = state.clone()
                sid, saves = store_session(variant, model, messages, copy, repeats)
                resume_s, exact = resume(variant, model, sid, copy, repeats)
                codec_rows.append((name, tokens, codec_name, variant.snapshots(sid)[-1].byte_size,
                                   statistics.median(saves) * 1e3, resume_s * 1e3, exact))
        del state, live
    engine.dispose()
    return rows, codec_rows


CONTROLS = "## Regenerate and branch: snapshot plus the gap vs re-reading the transcript"


@dataclass
class ControlRow:
    tokens: int
    messages: int
    snapshots: int
    reread_s: float
    restore_ms: float
    regenerate_ms: float
    regenerate_replayed: int
    branch_last_ms: float
    branch_middle_ms: float
    middle_replayed: int
    exact: bool


def written_turn_by_turn(store: SessionStore, model: LanguageModel, messages: list[ChatMessage],
                         keep: set[int]) -> tuple[int, float, dict[int, object]]:
    """A session written as the chat writes it: each turn read into the state and stored with its snapshot.
    Returns its id, the seconds spent reading (the same calls `replay` makes: the re-read baseline) and copies
    of the live state after the numbers of messages in `keep` (what a replay of those gives)."""
    state, kept = model.new_state(), {}
    reading = time.perf_counter()
    feed(model, state, with_system_prompt([], SYSTEM))
    read_s = time.perf_counter() - reading
    info = store.create("bench", system_prompt=SYSTEM)
    for user, answer in zip(messages[::2], messages[1::2], strict=True):
        if user.ordinal in keep:
            kept[user.ordinal] = state.clone()
        reading = time.perf_counter()
        feed(model, state, [user, answer])
        read_s += time.perf_counter() - reading
        info = store.append_turn(info.id, user.text, answer.text, state, model_fingerprint=model.fingerprint,
                                 expected_version=info.version)
    return info.id, read_s, kept


def timed(call, repeats: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    """Median seconds of `call()` over `repeats` runs, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def measure_controls(store: SessionStore, model: LanguageModel, messages: list[ChatMessage], tokens: int,
                     repeats: int) -> ControlRow:
    """One session of `messages`: written turn by turn, then regenerated and branched, each timed."""
    n = len(messages)
    middle = (n // 2) - (n // 2) % 2  # before a question in the middle of the session
    messages = [replace(m, ordinal=i) for i, m in enumerate(messages)]
    session_id, reread_s, live = written_turn_by_turn(store, model, messages, {middle, n - 2})
    answers = iter(range(1, repeats + 1))
    restores: list[float] = []

    def regenerate() -> object:
        answer = f"Another answer, number {next(answers)}."
        started = time.perf_counter()
        before = store.state_at(session_id, n - 2, model)
        restores.append(time.perf_counter() - started)
        feed(model, before.state, [messages[-2], ChatMessage("assistant", answer)])
        store.replace_answer(session_id, n - 1, answer, before.state, model_fingerprint=model.fingerprint,
                             expected_version=before.version)
        return before

    regenerate_s, before = timed(regenerate, repeats)
    branch_last_s, _ = timed(lambda: store.branch(session_id, n - 2, model, progress=False), repeats)
    branch_middle_s, branched = timed(lambda: store.branch(session_id, middle, model, progress=False), repeats)
    # The live states equal a replay (tests/memory): the stored session after the last regenerate, and the
    # branch, must equal them advanced over the same messages.
    expected = live[n - 2]
    feed(model, expected, store.messages(session_id)[n - 2 :])
    exact = (states_equal(store.load(session_id, model, progress=False).state, expected)
             and states_equal(branched.state, live[middle]))
    row = ControlRow(tokens, n, len(store.snapshots(session_id)), reread_s, statistics.median(restores) * 1e3,
                     regenerate_s * 1e3,
                     before.replayed_tokens, branch_last_s * 1e3, branch_middle_s * 1e3, branched.replayed_tokens,
                     exact)
    print(f"  re-read {reread_s:.1f} s, restore {row.restore_ms:.0f} ms, regenerate {row.regenerate_ms:.0f} ms, "
          "branch at the last question "
          f"{row.branch_last_ms:.0f} ms, in the middle {row.branch_middle_ms:.0f} ms ({row.middle_replayed:,} "
          f"tokens re-read), exact {exact}", flush=True)
    return row


def bench_controls(model: LanguageModel, lengths: list[int], words: list[str], url: str, repeats: int
                   ) -> list[ControlRow]:
    engine = make_engine(url)
    store = SessionStore(engine)
    rows = []
    for target in lengths:
        messages, tokens = transcript(model, words, target)
        print(f"controls: writing a {tokens:,}-token session turn by turn...", flush=True)
        rows.append(measure_controls(store, model, messages, tokens, repeats))
    engine.dispose()
    return rows


def report_controls(args, model_name: str, rows: list[ControlRow], load: tuple) -> None:  # type: ignore[no-untyped-def]
    """Write the controls section into the results file, in place of an older one; the rest stays."""
    pct = lambda ms, r: f"{ms / (r.reread_s * 1e3):.1%}"  # noqa: E731
    lines = [
        CONTROLS, "",
        f"Command: `python -m bench.memory --controls --lengths {args.lengths} --repeats {args.repeats}`; model: "
        f"{model_name}; torch {torch.__version__}, {torch.get_num_threads()} threads, SQLite. Load average (1 min) "
        f"on this shared 2-core machine: {load[0]:.1f} before, {load[1]:.1f} after.",
        "Baseline, measured in the same run: re-reading the whole transcript (the calls `replay` makes, timed "
        "while the session was written turn by turn, a snapshot after each turn, thinned by the policy). "
        "Regenerate: restore the state before the last question (restore: `state_at`, snapshot load plus the "
        "gap), then read the question and the new answer into it and store it (the answer's decoding left out; "
        "reading the turn is what every turn's commit costs). Branch: `SessionStore.branch` into a new session, "
        f"before the last question and before one in the middle. Medians of {args.repeats}; exact = the "
        "session's state after the last regenerate and the middle branch's state equal the live states of the "
        "same transcripts (which equal a replay, tests/memory), bit for bit.",
        "",
        "| session tokens | messages | snapshots kept | re-read (s) | restore (ms) | % | regenerate (ms) "
        "| tokens re-read | % of re-read "
        "| branch, last question (ms) | % | branch, middle (ms) | tokens re-read | % | exact |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r.tokens:,} | {r.messages} | {r.snapshots} | {r.reread_s:.1f} | {r.restore_ms:.0f} "
                     f"| {pct(r.restore_ms, r)} | {r.regenerate_ms:.0f} "
                     f"| {r.regenerate_replayed:,} | {pct(r.regenerate_ms, r)} | {r.branch_last_ms:.0f} "
                     f"| {pct(r.branch_last_ms, r)} "
                     f"| {r.branch_middle_ms:.0f} | {r.middle_replayed:,} | {pct(r.branch_middle_ms, r)} "
                     f"| {'yes' if r.exact else 'NO'} |")
    previous = RESULTS.read_text() if RESULTS.exists() else ""
    if CONTROLS in previous:
        start = previous.index(CONTROLS)
        end = previous.find("\n## ", start + len(CONTROLS))
        previous = previous[:start].rstrip("\n") + ("\n\n" + previous[end + 1 :] if end >= 0 else "")
    at = previous.find("## Notes")
    section = "\n".join(lines) + "\n\n"
    text = previous[:at] + section + previous[at:] if at >= 0 else previous.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)
    print("\n".join(lines))
    print(f"wrote {RESULTS}")


def models(choice: str) -> list[tuple[str, LanguageModel]]:
    cache = REPO / ".data" / "cache"
    teacher = load_model("teacher", cache_dir=cache)
    if choice in ("auto", "student"):
        try:
            return [("student", load_model("student", cache_dir=cache))]
        except (ValueError, FileNotFoundError) as exc:
            if choice == "student":
                raise
            print(f"no trained student ({exc}); measuring the teacher and the untrained student architecture")
    from backbone.student import StudentConfig, build_student, wrap_student

    untrained = wrap_student(build_student(teacher.model, StudentConfig()).eval(), teacher, "untrained")
    return [("teacher (KV cache)", teacher), ("student architecture, untrained", untrained)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,8192,32768", help="session lengths in tokens")
    parser.add_argument("--repeats", type=int, default=3, help="timed saves and resumes per session")
    parser.add_argument("--model", default="auto", choices=["auto", "student", "teacher"])
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--controls", action="store_true", help="regenerate and branch latency (the student)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = sorted(int(n) for n in args.lengths.split(","))
    load_before = os.getloadavg()[0]
    words = essay_words()
    if args.controls:
        with tempfile.TemporaryDirectory() as tmp:
            from app.database import upgrade

            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            upgrade(url)
            name, model = models("auto")[-1]  # the student (untrained only when no parameters are installed)
            with torch.inference_mode():
                rows = bench_controls(model, lengths, words, url, args.repeats)
        report_controls(args, name, rows, (load_before, os.getloadavg()[0]))
        return
    rows, codec_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        from app.database import upgrade

        upgrade(url)
        chosen = models(args.model)
        if args.model == "teacher":
            chosen = chosen[:1]
        for name, model in chosen:
            with torch.inference_mode():
                r, c = bench_model(name, model, lengths, words, url, args.repeats)
            rows += r
            codec_rows += c
    report(args, url if args.database_url else "SQLite (temporary file)", rows, codec_rows,
           (load_before, os.getloadavg()[0]))


def report(args, database: str, rows: list[Row], codec_rows: list[tuple], load: tuple) -> None:  # type: ignore[no-untyped-def]
    lines = [
        f"# Session memory: resume from a snapshot vs re-read the transcript (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {database})",
        "",
        f"Command: `python -m bench.memory --lengths {args.lengths} --repeats {args.repeats} --model {args.model}`. "
        f"Load average (1 min) on this shared 2-core machine: {load[0]:.1f} before, {load[1]:.1f} after.",
        "Baseline, measured in the same run: re-reading the whole transcript (`memory.transcript.replay`), which "
        "is what resuming costs without a saved state. Resume and save are medians of "
        f"{args.repeats}; exact = the resumed state is bit-identical to the live one.",
        "",
        "| model | session tokens | re-read (s) | resume (ms) | re-read / resume | save per turn (ms) "
        "| snapshot (MiB) | exact |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r.tokens is None:
            lines.append(f"| {r.model} | {r.target:,} | {r.note} | | | | | |")
            continue
        lines.append(f"| {r.model} | {r.tokens:,} | {r.reread_s:.1f} | {r.resume_ms:.1f} "
                     f"| {r.reread_s * 1e3 / r.resume_ms:,.0f}x | {r.save_ms:.1f} | {r.snapshot_bytes / 2**20:.2f} "
                     f"| {'yes' if r.exact else 'NO'} |")
    lines += ["", "## Codecs, at the shortest length (a recurrent state has the same size at any length)", "",
              "| model | session tokens | codec | snapshot (MiB) | save per turn (ms) | resume (ms) | exact |",
              "|---|---:|---|---:|---:|---:|---|"]
    for name, tokens, codec, size, save, resume_ms, exact in codec_rows:
        lines.append(f"| {name} | {tokens:,} | {codec} | {size / 2**20:.2f} | {save:.1f} | {resume_ms:.1f} "
                     f"| {'yes' if exact else 'no (lossy by design)' if 'bfloat16' in codec else 'NO'} |")
    previous = RESULTS.read_text() if RESULTS.exists() else ""
    if CONTROLS in previous:  # measured by --controls: kept, before the notes
        start = previous.index(CONTROLS)
        end = previous.find("\n## Notes", start)
        lines += ["", previous[start:end if end >= 0 else None].rstrip("\n")]
    write_keeping_notes(RESULTS, lines)
    print("\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
