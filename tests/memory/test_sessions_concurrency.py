"""Writers on SQLite and PostgreSQL: stale writers are refused, concurrent ones lose nothing, a writer
killed mid-transaction leaves the previous turn intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import save_file
from sqlalchemy import text

from backbone.generate import LanguageModel
from memory.errors import SessionConflictError
from memory.records import ChatMessage
from memory.sessions import SessionStore
from memory.transcript import feed, replay
from tests.memory.chat import Chat, states_equal

ROOT = Path(__file__).resolve().parents[2]


def test_a_stale_writer_is_refused_and_writes_nothing(store: SessionStore, model: LanguageModel) -> None:
    session_id = store.create("two tabs").id
    first, second = Chat(store, model, session_id), Chat(store, model, session_id)
    first.turn("from tab one", "ok")
    with pytest.raises(SessionConflictError, match="reload it"):
        second.turn("from tab two", "lost?")
    assert [m.text for m in store.messages(session_id)] == ["from tab one", "ok"]
    assert store.get(session_id).version == 1
    Chat(store, model, session_id).turn("from tab two", "after reloading")  # the fix the error names
    assert store.get(session_id).message_count == 4


def test_concurrent_appends_lose_nothing(store: SessionStore, model: LanguageModel) -> None:
    session_id = store.create("busy", system_prompt="Count.").id
    writers, turns = 4, 4
    conflicts = []
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(w: int) -> None:
        try:
            start.wait()
            for t in range(turns):
                while True:
                    chat = Chat(store, model, session_id)
                    try:
                        chat.turn(f"writer {w} turn {t}", f"reply {w}.{t}")
                        break
                    except SessionConflictError:
                        conflicts.append(w)
        except BaseException as exc:  # reported below, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors

    messages = store.messages(session_id)
    assert [m.ordinal for m in messages] == list(range(2 * writers * turns))
    pairs = [(messages[i].text, messages[i + 1].text) for i in range(0, len(messages), 2)]
    assert sorted(pairs) == sorted((f"writer {w} turn {t}", f"reply {w}.{t}") for w in range(writers)
                                   for t in range(turns))
    for w in range(writers):  # each writer's turns in its own order
        mine = [u for u, _ in pairs if u.startswith(f"writer {w} ")]
        assert mine == [f"writer {w} turn {t}" for t in range(turns)]
    assert store.get(session_id).version == writers * turns
    # No state built on a stale transcript got stored: the newest snapshot is the whole transcript's.
    loaded = store.load(session_id, model, progress=False)
    assert loaded.replayed_tokens == 0
    assert states_equal(loaded.state, replay(model, messages, "Count.", progress=False)[0])


def test_a_writer_killed_mid_transaction_leaves_the_previous_turn_intact(store: SessionStore, model: LanguageModel,
                                                                          db_url: str, tmp_path: Path) -> None:
    chat = Chat(store, model, store.create("crash").id)
    chat.turn("first question", "first answer")
    chat.turn("second question", "second answer")
    before = (store.get(chat.id), store.messages(chat.id), store.snapshots(chat.id))
    # The turn the doomed writer appends: a real state, advanced past the stored one.
    doomed = chat.loaded.state.clone()
    feed(model, doomed, [ChatMessage("user", "the turn that never lands"), ChatMessage("assistant", "never stored")])
    state_path, ready = tmp_path / "state.safetensors", tmp_path / "ready"
    save_file(doomed.to_tensors(), str(state_path))
    state_path.with_suffix(".json").write_text(json.dumps(doomed.metadata()))

    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.memory.crash_writer", db_url, str(chat.id), str(chat.loaded.version),
         str(state_path), str(ready), str(model.config.vocab_size)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert writer.poll() is None, writer.stderr.read()
            assert time.monotonic() < deadline, "the writer never reached its commit"
            time.sleep(0.05)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
        writer.stderr.close()

    after = (store.get(chat.id), store.messages(chat.id), store.snapshots(chat.id))
    assert after == before
    if db_url.startswith("sqlite"):
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
            assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
    loaded = store.load(chat.id, model, progress=False)
    assert loaded.replayed_tokens == 0 and states_equal(loaded.state, chat.loaded.state)
    # The lock died with the writer: the next turn goes through at once.
    Chat(store, model, chat.id).turn("third question", "third answer")
    assert [m.text for m in store.messages(chat.id)][-2:] == ["third question", "third answer"]
