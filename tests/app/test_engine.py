"""The chat engine end to end: retrieval, fork, streaming, commit, recall, reload, and bad input.

Tests marked `slow` use the real teacher with short answers; the others a tiny random model, where
what matters is behaviour (what is stored, what the state holds), not the words.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from app.chat.folders import FolderNotAllowedError
from app.chat.generation import Piece
from app.chat.scheduler import Cancelled, Failed, Finished, Waiting
from app.engine import ChatEngine, Retrieved, TurnOptions, TurnRefused, TurnResult
from memory.errors import SessionNotFoundError
from memory.records import ChatMessage
from memory.transcript import replay
from tests.app.conftest import FIXTURE_REPO

SHORT = TurnOptions(max_new_tokens=6, source_tokens=400)


def run_turn(engine: ChatEngine, session_id: int, message: str, options: TurnOptions = SHORT
             ) -> tuple[list[Any], TurnResult]:
    events = list(engine.ask(session_id, message, options))
    final = events[-1]
    if isinstance(final, Failed):
        raise final.error
    assert isinstance(final, Finished), events
    return events, final.result


def assert_same_state(a: Any, b: Any) -> None:
    ta, tb = a.to_tensors(), b.to_tensors()
    assert a.num_tokens == b.num_tokens
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


def cached_state(engine: ChatEngine, session_id: int) -> Any:
    return engine._states[session_id].state


@pytest.fixture
def kettle(make_engine: Any, tiny: Any) -> ChatEngine:
    """A tiny-model engine with the fixture repo indexed as collection "kettle"."""
    engine = make_engine(tiny)
    engine.index_folder(str(FIXTURE_REPO), "kettle")
    return engine


# --- the real model ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_question_about_the_repo_is_answered_from_the_right_file(make_engine: Any, teacher: Any) -> None:
    engine = make_engine(teacher)
    report = engine.index_folder(str(FIXTURE_REPO), "kettle")
    assert report.files_total == 4
    session = engine.create_session(collection="kettle")
    events, result = run_turn(engine, session.id, "Which port does the Kettle web service listen on?",
                              TurnOptions(max_new_tokens=16, source_tokens=500))
    assert result.citations[0].path == "docs/deploy.md"
    assert result.citations[0].citation.startswith("docs/deploy.md:1-")
    assert "8431" in result.answer
    pieces = [e.text for e in events if isinstance(e, Piece) and e.text]
    assert len(pieces) > 3 and "".join(pieces).strip() == result.answer  # streamed piece by piece
    stored = engine.messages(session.id)[-1]
    assert stored.role == "assistant" and stored.citations[0]["citation"] == result.citations[0].citation


@pytest.mark.slow
def test_passages_never_enter_the_persistent_state(make_engine: Any, teacher: Any) -> None:
    """After two turns with retrieval, the session state equals re-reading just the transcript, both in the
    running engine and after a restart (from the stored snapshot, with nothing re-read)."""
    engine = make_engine(teacher)
    engine.index_folder(str(FIXTURE_REPO), "kettle")
    session = engine.create_session(collection="kettle")
    _, first = run_turn(engine, session.id, "How long does green tea steep?")
    events, second = run_turn(engine, session.id, "And what is the late fee rate?")
    retrieved = next(e for e in events if isinstance(e, Retrieved))
    assert retrieved.sources and second.prompt_tokens > 200  # the fork did read passages

    messages = engine.messages(session.id)
    assert [m.role for m in messages] == ["user", "assistant"] * 2
    rebuilt, fed = replay(teacher, messages, engine.store.get(session.id).system_prompt, progress=False)
    live = cached_state(engine, session.id)
    assert_same_state(live, rebuilt)
    assert second.state_tokens == fed < first.state_tokens + second.prompt_tokens

    restarted = make_engine(teacher)
    view = restarted.open_session(session.id)
    assert view.replayed_tokens == 0 and view.notice is None
    assert_same_state(cached_state(restarted, session.id), rebuilt)


@pytest.mark.slow
def test_a_fact_from_turn_1_is_recalled_in_turn_20_after_a_restart(make_engine: Any, teacher: Any) -> None:
    """Turn 1 states a fact (answered by the model); turns 2-19 are short exchanges appended to the
    transcript with fixed answers (the state reads them on the next load, as after an import); the app
    restarts; turn 20 asks for the fact. The answer must contain it, and the session's recall index must
    have brought turn 1 back into the prompt."""
    engine = make_engine(teacher)
    session = engine.create_session("Locker")
    run_turn(engine, session.id, "Note for later: the code of my locker is 4729.", TurnOptions(max_new_tokens=12))
    topics = ["the sea", "a forest", "the moon", "bread", "rain", "a bicycle", "music", "a river", "snow",
              "a garden", "coffee", "a train", "the wind", "a library", "mountains", "a candle", "autumn", "a bridge"]
    filler = [m for topic in topics for m in (ChatMessage("user", f"Say one short sentence about {topic}."),
                                               ChatMessage("assistant", f"Here is one: {topic} is lovely."))]
    engine.store.append_messages(session.id, filler)

    restarted = make_engine(teacher)
    view = restarted.open_session(session.id)
    assert len(view.messages) == 38
    events, result = run_turn(restarted, session.id, "What is the code of my locker?", TurnOptions(max_new_tokens=12))
    recalled = next(e for e in events if isinstance(e, Retrieved)).recalled
    assert any("4729" in r.text for r in recalled)
    assert "4729" in result.answer
    assert len(restarted.messages(session.id)) == 40


@pytest.mark.slow
def test_without_trained_student_parameters_the_teacher_serves_and_says_so(teacher: Any, model_cache: Path,
                                                                          tmp_path: Path) -> None:
    from app.chat.models import ModelRegistry
    from app.config import Settings

    settings = Settings(data_dir=model_cache.parent, student_path=tmp_path / "no-student.safetensors")
    registry = ModelRegistry(settings)
    registry.adopt("teacher", teacher)
    served = registry.get()  # settings.model is "student" by default
    assert (served.requested, served.name, served.model) == ("student", "teacher", teacher)
    assert "not trained" in served.note and served.label == "teacher (instead of student)"
    assert registry.get("student") is served  # decided once, not retried on every turn
    registry.close()


@pytest.mark.parametrize("bug", [ValueError("shapes (3, 4), (4, 5)"), KeyError("layers.3.mix")])
def test_a_bug_while_loading_the_student_is_not_taken_for_missing_parameters(monkeypatch, tmp_path: Path,
                                                                             bug: Exception) -> None:
    """Only missing or unusable parameter files make the teacher serve; any other error fails loudly."""
    import backbone.loader
    from app.chat.models import ModelRegistry
    from app.config import Settings

    def load_model(kind: str, **_: Any) -> Any:
        if kind == "student":
            raise bug
        return object()

    monkeypatch.setattr(backbone.loader, "load_model", load_model)
    registry = ModelRegistry(Settings(data_dir=tmp_path))
    with pytest.raises(type(bug), match=re.escape(str(bug))):
        registry.get("student")
    registry.close()


# --- behaviour, on the tiny model -------------------------------------------------------------------

def test_events_come_in_order_and_the_turn_is_stored_with_its_citations(kettle: ChatEngine) -> None:
    session = kettle.create_session(collection="kettle")
    events, result = run_turn(kettle, session.id, "Which port does the service listen on?")
    kinds = [type(e).__name__ for e in events if not (isinstance(e, Piece) and not e.text)]
    assert kinds[0] == "Started" and kinds[-1] == "Finished" and "Retrieved" in kinds
    assert kinds.index("Retrieved") < min((i for i, k in enumerate(kinds) if k == "Piece"), default=len(kinds))
    assert result.citations and result.citations[0].path == "docs/deploy.md"
    stored = kettle.messages(session.id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[0].text == "Which port does the service listen on?"
    assert [c["citation"] for c in stored[1].citations] == [c.citation for c in result.citations]
    assert result.session.token_count == result.state_tokens == cached_state(kettle, session.id).num_tokens


def test_stop_keeps_the_answer_so_far(kettle: ChatEngine) -> None:
    session = kettle.create_session()
    ticket = kettle.ask(session.id, "Tell me a long story.", TurnOptions(max_new_tokens=400))
    seen, stopped = "", False
    for event in ticket:
        if isinstance(event, Piece) and not stopped:
            seen += event.text
            if len(seen) > 20:
                assert kettle.cancel(session.id) == 1
                stopped = True
        if isinstance(event, Finished):
            result = event.result
    assert result.stop_reason == "cancelled" and result.answer.endswith("_(stopped)_")
    assert result.answer_tokens < 400
    stored = kettle.messages(session.id)
    assert stored[-1].text == result.answer and stored[-1].text.startswith(seen.strip()[:20])


def test_a_turn_cancelled_while_waiting_stores_nothing(make_engine: Any, tiny: Any) -> None:
    engine = make_engine(tiny, max_active=1)
    busy, waiting = engine.create_session(), engine.create_session()
    first = engine.ask(busy.id, "Keep talking.", TurnOptions(max_new_tokens=200))
    second = engine.ask(waiting.id, "Hello?", SHORT)
    next(e for e in first if isinstance(e, Piece))
    assert any(isinstance(e, Waiting) for e in [next(iter(second))])
    engine.cancel(waiting.id)
    assert isinstance(list(second)[-1], Cancelled)
    engine.cancel(busy.id)
    list(first)
    assert engine.messages(waiting.id) == []


@pytest.mark.parametrize(("message", "expected"), [
    ("", "empty"), ("   \n\t", "empty"), ("x" * 100_000, "100,000 characters"), ("word " * 5_000, "tokens long"),
])
def test_bad_messages_are_refused_and_nothing_is_stored(kettle: ChatEngine, message: str, expected: str) -> None:
    session = kettle.create_session()
    with pytest.raises(TurnRefused, match=expected) as refused:
        kettle.ask(session.id, message)
    assert "Nothing was sent" in str(refused.value) or expected == "empty"
    assert kettle.messages(session.id) == [] and kettle.registry.scheduler.queued == 0


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(TurnRefused, match="temperature"):
        TurnOptions(temperature=-1)
    with pytest.raises(TurnRefused, match="max answer tokens"):
        TurnOptions(max_new_tokens=0)


def test_a_turn_that_cannot_fit_the_context_is_refused_before_anything_is_stored(kettle: ChatEngine) -> None:
    session = kettle.create_session()
    events = list(kettle.ask(session.id, "Hi", TurnOptions(max_new_tokens=4096)))
    assert isinstance(events[-1], Failed) and isinstance(events[-1].error, TurnRefused)
    assert "context" in str(events[-1].error)
    assert kettle.messages(session.id) == []


def test_a_deleted_collection_is_reported_and_the_session_kept(kettle: ChatEngine) -> None:
    session = kettle.create_session(collection="kettle")
    run_turn(kettle, session.id, "First question?")
    kettle.delete_collection("kettle")
    with pytest.raises(TurnRefused, match="was deleted"):
        kettle.ask(session.id, "Second question?")
    assert len(kettle.messages(session.id)) == 2
    kettle.set_collection(session.id, None)
    run_turn(kettle, session.id, "Second question?")
    assert len(kettle.messages(session.id)) == 4


def test_a_deleted_session_is_reported(kettle: ChatEngine) -> None:
    session = kettle.create_session()
    kettle.delete_session(session.id)
    with pytest.raises(SessionNotFoundError, match="deleted"):
        kettle.ask(session.id, "Anyone there?")


def test_one_session_in_two_tabs_keeps_both_turns_in_order(kettle: ChatEngine) -> None:
    """Two tabs send at the same moment: the turns run one after the other, the second reads the first."""
    session = kettle.create_session()
    results: dict[str, TurnResult] = {}
    barrier = threading.Barrier(2)

    def tab(name: str) -> None:
        barrier.wait()
        results[name] = run_turn(kettle, session.id, f"Message from tab {name}")[1]

    threads = [threading.Thread(target=tab, args=(name,)) for name in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stored = kettle.messages(session.id)
    assert sorted(m.text for m in stored if m.role == "user") == ["Message from tab A", "Message from tab B"]
    assert [m.role for m in stored] == ["user", "assistant"] * 2
    later = max(results.values(), key=lambda r: r.session.version)
    earlier = min(results.values(), key=lambda r: r.session.version)
    assert later.state_tokens > earlier.state_tokens
    rebuilt, _ = replay(kettle.served().model, stored, kettle.store.get(session.id).system_prompt, progress=False)
    assert_same_state(cached_state(kettle, session.id), rebuilt)


def test_a_turn_stored_by_another_process_meanwhile_is_not_lost(make_engine: Any, tiny: Any) -> None:
    """Two engines on one database (two app processes). Between turns, the second notices that its cached
    state is stale and reloads; during a turn, a conflicting commit makes it re-read and append after.
    Either way every turn is kept, in order, and the state equals the transcript."""
    one, two = make_engine(tiny), make_engine(tiny)
    session = one.create_session()
    run_turn(one, session.id, "First, from process one.")
    two.open_session(session.id)
    run_turn(one, session.id, "Second, from process one.")
    _, between = run_turn(two, session.id, "Third, from process two.")
    assert between.notice is None

    ticket = two.ask(session.id, "Fourth, from process two.", TurnOptions(max_new_tokens=60))
    events = iter(ticket)
    next(e for e in events if isinstance(e, Piece) and e.text)
    run_turn(one, session.id, "Fifth, from process one, while two is answering.")
    during = [e for e in events][-1].result
    assert "changed elsewhere" in during.notice
    stored = two.messages(session.id)
    assert [m.text for m in stored if m.role == "user"] == [
        "First, from process one.", "Second, from process one.", "Third, from process two.",
        "Fifth, from process one, while two is answering.", "Fourth, from process two."]
    rebuilt, _ = replay(tiny, stored, two.store.get(session.id).system_prompt, progress=False)
    assert_same_state(cached_state(two, session.id), rebuilt)


def test_many_sessions_at_once_are_all_served(make_engine: Any, tiny: Any) -> None:
    engine = make_engine(tiny, max_active=2)
    sessions = [engine.create_session(f"user {i}") for i in range(6)]
    tickets = [engine.ask(s.id, f"Hello from user {i}", SHORT) for i, s in enumerate(sessions)]
    finals = [list(t)[-1] for t in tickets]
    assert all(isinstance(f, Finished) for f in finals), finals
    assert all(len(engine.messages(s.id)) == 2 for s in sessions)


def test_indexing_a_folder_outside_the_allowed_roots_is_refused(kettle: ChatEngine) -> None:
    with pytest.raises(FolderNotAllowedError, match="outside the folders this server may read"):
        kettle.index_folder(f"{FIXTURE_REPO}/{os.path.relpath('/etc', FIXTURE_REPO)}", "sneaky")
    assert [c.name for c in kettle.list_collections()] == ["kettle"]


def test_export_then_import_gives_the_same_conversation(kettle: ChatEngine, tmp_path: Path) -> None:
    session = kettle.create_session("Tea notes", collection="kettle")
    _, result = run_turn(kettle, session.id, "How long does green tea steep?")
    exported = kettle.export_session(session.id, tmp_path, "json")
    markdown = kettle.export_session(session.id, tmp_path, "markdown")
    assert exported.name == f"Tea-notes-{session.id}.json" and markdown.suffix == ".md"
    assert "How long does green tea steep?" in markdown.read_text() and result.citations[0].citation in \
        markdown.read_text()
    imported = kettle.import_session(exported.read_bytes())
    assert imported.id != session.id and imported.title == "Tea notes" and imported.collection == "kettle"
    view = kettle.open_session(imported.id)
    assert [(m.role, m.text, m.citations) for m in view.messages] == \
        [(m.role, m.text, m.citations) for m in kettle.messages(session.id)]
    assert view.replayed_tokens > 0  # imports carry no state: it is rebuilt from the transcript
    assert view.state_tokens == result.state_tokens
    with pytest.raises(ValueError, match="not a Rillet session export"):
        kettle.import_session(b'{"title": "x"}')


def test_messages_are_indexed_for_recall_before_the_next_question(kettle: ChatEngine, tmp_path: Path) -> None:
    """Importing a session and storing a turn embed the new messages at once, so the next question's recall
    has nothing left to embed (a long session would otherwise be embedded while the user waits)."""
    session = kettle.create_session("Tea notes", collection="kettle")
    run_turn(kettle, session.id, "How long does green tea steep?")
    assert kettle.recall.sync(session.id) == 0
    run_turn(kettle, session.id, "And black tea?")
    assert kettle.recall.sync(session.id) == 0
    imported = kettle.import_session(kettle.export_session(session.id, tmp_path, "json").read_bytes())
    assert kettle.recall.sync(imported.id) == 0
    found = kettle.recall.recall(imported.id, "black tea", k=10)
    assert {p.ordinal for p in found} == {m.ordinal for m in kettle.messages(imported.id)}
