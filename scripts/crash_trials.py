"""Crash-consistency trials: kill -9 at random points of indexing and of a turn's commit, then check.

    python scripts/crash_trials.py                                  # 100 of each kind on SQLite
    python scripts/crash_trials.py --kind commit --trials 20 --database postgresql
    nice -n 10 python scripts/crash_trials.py --trials 100 --database both --seed 7

Each trial runs the work in a child process (a fresh interpreter for indexing, a fork of this one, with
the model loaded, for commits) that counts its "points" (every SQL statement before and
after it runs, every COMMIT, every rename of an index file) and SIGKILLs itself at a point drawn at
random from those a whole run has; the parent then checks, in a fresh process state:

- index: the catalog is whole (no indexed file without chunks, SQLite's integrity check), the next run
  completes it, and then the catalog's chunk ids equal the FAISS ids and the BM25 ids, both in memory and
  in the files on disk, and the catalog holds exactly what a fresh index of the same tree holds. Between
  trials the tree changes at random (files added, edited, deleted), so kills land in every kind of run.
- commit: every turn committed before the kill is intact and in order, no half turn (a user message
  without its answer) is stored, the session's version counts the stored turns, and the state loaded
  from the snapshots equals a replay of the transcript, bit for bit.

It prints the count of trials, of kills, and of inconsistencies (any is a bug); the exit status is 1 if
there was one. `make test` runs a handful (tests/test_crash_trials.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TURN_SYSTEM_PROMPT = "You are terse."


# --- in the child: counting points and dying at one -------------------------------------------------

NOTE_VAR = "RILLET_TRIAL_NOTE"  # a file where the child writes which point it died at


class KillPoints:
    """Counts the points a run passes; SIGKILLs the process at number `kill_at` (0: never), having written
    what the point was (e.g. "before INSERT INTO chunks") to the file named by RILLET_TRIAL_NOTE."""

    def __init__(self, kill_at: int) -> None:
        self.kill_at, self.count = kill_at, 0

    def point(self, what: str) -> None:
        self.count += 1
        if self.count == self.kill_at:
            if os.environ.get(NOTE_VAR):
                Path(os.environ[NOTE_VAR]).write_text(what)
            os.kill(os.getpid(), signal.SIGKILL)

    def watch_engine(self, engine: Any) -> None:
        from sqlalchemy import event

        def statement(when: str) -> Callable[..., None]:
            def at(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
                self.point(f"{when} {' '.join(sql.split()[:3])}")
            return at

        event.listen(engine, "before_cursor_execute", statement("before"))
        event.listen(engine, "after_cursor_execute", statement("after"))
        event.listen(engine, "commit", lambda _conn: self.point("before COMMIT"))

    def watch_renames(self) -> None:
        """Index files are swapped in by os.replace: a point before and after each."""
        original = os.replace

        def replace(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
            self.point(f"before renaming to {Path(target).name}")
            original(source, target, *args, **kwargs)
            self.point(f"after renaming to {Path(target).name}")

        os.replace = replace  # type: ignore[assignment]


def make_embedder(kind: str) -> Any:
    if kind == "hash":
        from tests.hash_embedder import HashEmbedder

        return HashEmbedder()
    from retrieval.embedder import SentenceEmbedder

    embedder = SentenceEmbedder(device="cpu")
    embedder.embed(["load the model before anything is counted"])
    return embedder


def child_index(url: str, index_dir: str, name: str, kill_at: int, batch_chunks: int, embedder_kind: str) -> None:
    import retrieval.indexer as indexer
    from memory.db import make_engine
    from retrieval.service import Retrieval

    indexer.BATCH_CHUNKS = batch_chunks  # several commits per run
    indexer.SAVE_EVERY_S = 0.0  # and a vector file saved after each
    embedder = make_embedder(embedder_kind)
    engine = make_engine(url)
    points = KillPoints(kill_at)
    points.watch_engine(engine)
    points.watch_renames()
    Retrieval(engine, Path(index_dir), embedder).index(name)
    print(json.dumps({"points": points.count}))


def tiny_chat_model() -> Any:
    """The tiny random-weight student (a recurrent state, as the shipped model has) with the real tokenizer."""
    from gguf import GGUFReader

    from backbone.gguf import find_gguf, read_metadata
    from backbone.tokenizer import ChatTokenizer
    from tests.memory.tiny import tiny_student

    return tiny_student(ChatTokenizer.from_gguf_metadata(read_metadata(GGUFReader(find_gguf()))), 0)


def turn_texts(number: int) -> tuple[str, str]:
    return f"question {number}: what is {number} squared?", f"answer {number}: {number * number}."


def turn_store(url: str) -> Any:
    from memory.db import make_engine
    from memory.policy import SnapshotPolicy
    from memory.sessions import SessionStore

    return SessionStore(make_engine(url), policy=SnapshotPolicy(every=2, per_band=2, keep_last=2))  # prunes often


def child_commit(url: str, session_id: int, first: int, turns: int, kill_at: int, model: Any = None) -> int:
    from memory.records import ChatMessage
    from memory.transcript import feed

    model = model or tiny_chat_model()
    store = turn_store(url)
    points = KillPoints(kill_at)
    points.watch_engine(store.engine)  # loading (a rebuilt state is saved) and every turn's transaction
    loaded = store.load(session_id, model, progress=False)
    info = loaded.info
    for number in range(first, first + turns):
        user, answer = turn_texts(number)
        feed(model, loaded.state, [ChatMessage("user", user), ChatMessage("assistant", answer)])
        info = store.append_turn(session_id, user, answer, loaded.state, model_fingerprint=model.fingerprint,
                                 expected_version=info.version)
    return points.count


# --- in the parent ----------------------------------------------------------------------------------

@dataclass
class Tally:
    kind: str
    database: str
    trials: int = 0  # runs killed mid-work, then checked
    completed: int = 0  # runs that ended before their kill point (checked all the same, not counted as trials)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    where: Counter[str] = field(default_factory=Counter)  # the kind of point each kill landed on

    def line(self) -> str:
        return (f"{self.kind:6} on {self.database:10}: {self.trials} trials killed mid-run, "
                f"{len(self.problems)} inconsistencies ({self.completed} more runs ended before their kill point; "
                f"{self.seconds:.0f} s)")

    def record(self, run: int, killed: bool, kill_at: int, found: list[str], where: str = "") -> None:
        if killed:
            self.where[" ".join(where.split()[:2]).rstrip(",") or "?"] += 1
        self.trials += killed
        self.completed += not killed
        self.problems += [f"run {run} (kill at point {kill_at}): {p}" for p in found]


def killed_where() -> str:
    note = Path(os.environ[NOTE_VAR])
    said = note.read_text() if note.exists() else "?"
    note.unlink(missing_ok=True)
    return said


def run_forked(work: Callable[[], int]) -> tuple[bool, int]:
    """Run `work` in a forked child (which has the parent's model already loaded); (killed, points passed)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own database connections (made in `work`), never the parent's
        os.close(read)
        code = 0
        try:
            os.write(write, str(work()).encode())
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 3
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        said = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return True, 0
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise RuntimeError(f"the child failed (status {status}); its traceback is above")
    return False, int(said)


def run_child(args: list[str], kill_at: int) -> tuple[bool, int]:
    """Run a child; (killed, points it passed when not killed)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "child", *args, str(kill_at)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode == -signal.SIGKILL:
        return True, 0
    if done.returncode != 0:
        raise RuntimeError(f"the child failed:\n{done.stderr[-3000:]}")
    return False, json.loads(done.stdout.strip().splitlines()[-1])["points"]


@contextlib.contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    from app.database import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{folder / 'trials.db'}"
        upgrade(url)
        yield url
        return
    from tests.pg import temporary_database

    with temporary_database("rillet_trials") as url:
        upgrade(url)
        yield url


def sqlite_sound(url: str) -> list[str]:
    if not url.startswith("sqlite"):
        return []
    from sqlalchemy import text

    from memory.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            problems = [] if conn.execute(text("PRAGMA integrity_check")).scalar() == "ok" else ["integrity_check"]
            if conn.execute(text("PRAGMA foreign_key_check")).all():
                problems.append("foreign_key_check")
    finally:
        engine.dispose()
    return problems


def mutate_tree(root: Path, rng: random.Random, step: int) -> None:
    """Add, edit and delete a few files, so each run has new work (several chunks per file)."""
    from tests.retrieval.repo import TOPICS, helpers_module

    files = sorted(root.glob("*.py"))
    for path in rng.sample(files, max(0, len(files) - 24)):  # the tree stays small: every trial stays quick
        path.unlink()
        files.remove(path)
    for _ in range(rng.randint(1, 4)):
        topics = rng.sample(TOPICS, rng.randint(1, 4))
        (root / f"m{step}_{rng.randrange(10**6)}.py").write_text(helpers_module(topics) + f"\nSTEP = {step}\n")
    for path in rng.sample(files, min(len(files), rng.randint(0, 2))):
        path.write_text(path.read_text() + f"\n\ndef edited_{step}():\n    return {step}\n")
    for path in rng.sample(files, min(len(files), rng.randint(0, 1))):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def index_problems(url: str, index_dir: Path, name: str, embedder: Any) -> list[str]:
    """Recover with the next run, then compare ids everywhere and the catalog with a fresh index."""
    import numpy as np
    from sqlalchemy import select

    from memory.db import make_engine
    from retrieval.bm25 import BM25Index
    from retrieval.catalog import Chunk, Collection, File
    from retrieval.service import Retrieval
    from retrieval.vector_index import VectorIndex

    problems = sqlite_sound(url)
    engine = make_engine(url)
    try:
        retrieval = Retrieval(engine, index_dir, embedder)  # nothing in memory: what the files say
        with retrieval.db() as session:
            orphans = session.scalars(select(File.path).where(File.status == "indexed", ~File.chunks.any())).all()
        if orphans:
            problems.append(f"indexed files without chunks after the kill: {orphans[:3]}")
        retrieval.index(name)
        store = retrieval._prepare_search(name, None, None)[1]
        catalog = store.catalog_ids()
        for what, ids in (("FAISS in memory", np.sort(store.vectors().ids())), ("BM25 in memory", store.bm25().ids),
                          ("FAISS file", np.sort(VectorIndex.load(store.vectors_path).ids())),
                          ("BM25 files", BM25Index.load(store.bm25_path).ids)):
            if not np.array_equal(ids, catalog):
                problems.append(f"{what} ids differ from the catalog ({len(ids)} vs {len(catalog)})")

        def contents(collection: str) -> list[tuple[Any, ...]]:
            with retrieval.db() as session:
                return sorted(tuple(r) for r in session.execute(
                    select(File.path, File.status, Chunk.ordinal, Chunk.start_line, Chunk.end_line, Chunk.text)
                    .join(Chunk, isouter=True).join(Collection).where(Collection.name == collection)))

        fresh = f"{name}-fresh"
        retrieval.create_collection(fresh, retrieval.get_collection(name).roots)
        retrieval.index(fresh)  # vectors come from the embedding cache: cheap
        if contents(name) != contents(fresh):
            problems.append("the recovered catalog differs from a fresh index of the same tree")
        retrieval.delete_collection(fresh)
    finally:
        engine.dispose()
    return problems


def index_trials(url: str, trials: int, rng: random.Random, folder: Path, tally: Tally,
                 log: Callable[[str], None], embedder_kind: str = "hash") -> None:
    from memory.db import make_engine
    from retrieval.service import Retrieval

    embedder = make_embedder(embedder_kind)
    tree, index_dir, name = folder / "tree", folder / "indexes", "trials"
    tree.mkdir()
    engine = make_engine(url)
    Retrieval(engine, index_dir, embedder).create_collection(name, [tree])
    engine.dispose()
    points = 0
    run = 0
    while tally.trials < trials and run <= 3 * trials:  # run 0 only measures how many points a run passes
        mutate_tree(tree, rng, run)
        batch = rng.choice([2, 3, 5, 8, 40])
        kill_at = 0 if run == 0 else rng.randint(1, max(points * 3 // 2, 10))  # some runs end: they measure
        killed, passed = run_child(["index", url, str(index_dir), name, str(batch), embedder_kind], kill_at)
        points = max(points, passed, 10)
        found = index_problems(url, index_dir, name, embedder)
        if run:
            where = killed_where() if killed else ""
            tally.record(run, killed, kill_at, found, where)
            log(f"index run {run}: {f'killed at point {kill_at} ({where})' if killed else 'ran to the end'}"
                + (f"; PROBLEMS: {found}" if found else ""))
        run += 1


def commit_problems(url: str, session_id: int, model: Any, committed_before: int) -> tuple[list[str], int]:
    """Check the session; returns (problems, turns now stored)."""
    from memory.transcript import replay

    problems = sqlite_sound(url)
    store = turn_store(url)
    try:
        messages = store.messages(session_id)
        info = store.get(session_id)
        turns = len(messages) // 2
        if len(messages) % 2:
            problems.append(f"half a turn stored: {len(messages)} messages")
        expected = [text for n in range(turns) for text in turn_texts(n)]
        if [m.text for m in messages[: 2 * turns]] != expected:
            problems.append("the stored turns are not the ones committed, in order")
        if [m.role for m in messages] != ["user", "assistant"] * turns + ["user"] * (len(messages) % 2):
            problems.append("the roles do not alternate user, assistant")
        if turns < committed_before:
            problems.append(f"a committed turn was lost ({turns} stored, {committed_before} committed before)")
        if info.version != turns:
            problems.append(f"version {info.version} for {turns} turns")
        loaded = store.load(session_id, model, progress=False)
        rebuilt, _ = replay(model, messages, TURN_SYSTEM_PROMPT, progress=False)
        if not states_equal(loaded.state, rebuilt):
            problems.append("the loaded state differs from a replay of the transcript")
        if loaded.notice and "could not be used" in loaded.notice:
            problems.append(f"a damaged snapshot: {loaded.notice}")
    finally:
        store.engine.dispose()
    return problems, turns


def states_equal(a: Any, b: Any) -> bool:
    import torch

    ta, tb = a.to_tensors(), b.to_tensors()
    return a.num_tokens == b.num_tokens and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def commit_trials(url: str, trials: int, rng: random.Random, tally: Tally, log: Callable[[str], None],
                  turns_per_session: int = 24) -> None:
    """Each trial forks: the child starts with the model loaded, so a trial costs its work, not an import."""
    import torch

    torch.set_num_threads(1)  # no OpenMP pool in the parent that a forked child would inherit half of
    model = tiny_chat_model()
    store = turn_store(url)
    points_per_turn = 0
    session_id, stored = None, 0
    run = 0
    while tally.trials < trials and run <= 3 * trials:  # run 0 only measures how many points a turn passes
        if session_id is None or stored >= turns_per_session:  # a fresh session now and then: replays stay short
            session_id, stored = store.create("crash trials", system_prompt=TURN_SYSTEM_PROMPT).id, 0
        turns = rng.randint(1, 3)
        kill_at = 0 if run == 0 else rng.randint(1, max(points_per_turn * turns * 3 // 2, 10))
        args = (url, session_id, stored, turns, kill_at)
        killed, passed = run_forked(lambda args=args: child_commit(*args, model=model))
        if not killed:  # loading counts too: a turn's share of a whole run, the largest seen
            points_per_turn = max(points_per_turn, passed // turns)
        found, stored = commit_problems(url, session_id, model, stored)
        if run:
            where = killed_where() if killed else ""
            tally.record(run, killed, kill_at, found, where)
            log(f"commit run {run}: {f'killed at point {kill_at} ({where})' if killed else 'ran to the end'}, "
                f"{stored} turns stored" + (f"; PROBLEMS: {found}" if found else ""))
        run += 1
    store.engine.dispose()


def run_trials(kind: str, database_kind: str, trials: int, seed: int, log: Callable[[str], None] = print,
               embedder: str = "hash") -> Tally:
    tally = Tally(kind, database_kind)
    rng = random.Random(f"{seed}-{kind}-{database_kind}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rillet-trials-") as tmp, database(database_kind, Path(tmp)) as url:
        os.environ[NOTE_VAR] = str(Path(tmp) / "killed-at")
        if kind == "index":
            index_trials(url, trials, rng, Path(tmp), tally, log, embedder)
        else:
            commit_trials(url, trials, rng, tally, log)
    tally.seconds = time.perf_counter() - started
    return tally


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "child":
        kind, *rest = argv[1:]
        if kind == "index":
            url, index_dir, name, batch, embedder_kind, kill_at = rest
            child_index(url, index_dir, name, int(kill_at), int(batch), embedder_kind)
        else:
            url, session_id, first, turns, kill_at = rest
            print(json.dumps({"points": child_commit(url, int(session_id), int(first), int(turns), int(kill_at))}))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["index", "commit", "both"], default="both")
    parser.add_argument("--trials", type=int, default=100, help="trials of each kind on each database")
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedder", choices=["hash", "real"], default="hash",
                        help="index trials: vectors from a hash of the text (fast) or the real model")
    parser.add_argument("--quiet", action="store_true", help="only the summary")
    parser.add_argument("--write-results", action="store_true", help="also write bench/results/crash_trials.md")
    args = parser.parse_args(argv)
    kinds = ["index", "commit"] if args.kind == "both" else [args.kind]
    databases = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    log = (lambda _line: None) if args.quiet else (lambda line: print(line, flush=True))
    tallies = [run_trials(k, d, args.trials, args.seed, log, args.embedder) for k in kinds for d in databases]
    print("\nCrash-consistency trials (kill -9 at a random point):")
    for tally in tallies:
        print("  " + tally.line())
        print("    killed at: " + ", ".join(f"{what} {n}" for what, n in tally.where.most_common()))
        for problem in tally.problems:
            print("    " + problem)
    if args.write_results:
        write_results(tallies, args)
    return 1 if any(t.problems for t in tallies) else 0


def write_results(tallies: list[Tally], args: argparse.Namespace) -> None:
    from bench import write_keeping_notes

    lines = ["# Crash-consistency trials", "",
             f"`python scripts/crash_trials.py --trials {args.trials} --database {args.database} --seed {args.seed}"
             f" --embedder {args.embedder}`, {time.strftime('%Y-%m-%d')}. Each trial is a run killed with SIGKILL",
             "at a point drawn at random (an SQL statement, before or after it runs, a COMMIT, an index-file rename),",
             "then checked (scripts/crash_trials.py says what).", "",
             "| kind | database | trials killed mid-run | inconsistencies | runs that ended first | seconds |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {t.kind} | {t.database} | {t.trials} | {len(t.problems)} | {t.completed} | {t.seconds:.0f} |"
              for t in tallies]
    lines += ["", "Where the kills landed (kind of point: count):", ""]
    lines += [f"- {t.kind} on {t.database}: " + ", ".join(f"{w} {n}" for w, n in t.where.most_common())
              for t in tallies]
    write_keeping_notes(ROOT / "bench" / "results" / "crash_trials.md", lines)


if __name__ == "__main__":
    sys.exit(main())
