"""Regenerate, choose an answer, undo, branch and edit through the engine, on SQLite and PostgreSQL: after
each, the session's state (in the engine and as stored) equals a replay of its transcript, bit for bit."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from app.chat.scheduler import Failed, Finished
from app.engine import ChatEngine, TurnOptions, TurnRefused, TurnResult
from memory.transcript import replay
from tests.app.conftest import FIXTURE_REPO
from tests.app.test_engine import SHORT, assert_same_state, cached_state, run_turn

SAMPLED = TurnOptions(max_new_tokens=6, source_tokens=400, temperature=1.0, seed=7)


@pytest.fixture
def engine(make_engine: Any, tiny: Any, db_url: str) -> ChatEngine:
    return make_engine(tiny, database_url=db_url)


def finish(ticket: Any) -> TurnResult:
    events = list(ticket)
    if isinstance(events[-1], Failed):
        raise events[-1].error
    assert isinstance(events[-1], Finished), events
    return events[-1].result


def assert_state_is_the_transcript(engine: ChatEngine, session_id: int, tiny: Any) -> None:
    """The engine's state and the stored one (read back by a fresh load) both equal a replay."""
    info = engine.store.get(session_id)
    expected, _ = replay(tiny, engine.messages(session_id), info.system_prompt, progress=False)
    assert_same_state(cached_state(engine, session_id), expected)
    stored = engine.store.load(session_id, tiny, progress=False)
    assert stored.replayed_tokens == (0 if stored.messages else expected.num_tokens)  # no message, no snapshot
    assert_same_state(stored.state, expected)


def two_turns(engine: ChatEngine) -> int:
    session = engine.create_session("controls")
    run_turn(engine, session.id, "What does a kettle do?")
    run_turn(engine, session.id, "And a teapot?")
    return session.id


def test_regenerate_keeps_both_answers_and_the_state_holds_the_chosen_one(engine: ChatEngine, tiny: Any) -> None:
    session_id = two_turns(engine)
    first = engine.messages(session_id)[-1].text
    result = finish(engine.regenerate(session_id, SAMPLED))
    assert result.message == "And a teapot?" and result.answer != first
    messages = engine.messages(session_id)
    assert len(messages) == 4 and messages[-1].text == result.answer and messages[-2].text == "And a teapot?"
    place = engine.variants(session_id)[3]
    assert [a.text for a in place.answers] == [first, result.answer] and place.chosen == 1
    assert result.tokens_per_s is None or result.tokens_per_s > 0
    assert_state_is_the_transcript(engine, session_id, tiny)

    view = engine.choose_answer(session_id, 0)
    assert view.messages[-1].text == first and view.variants[3].chosen == 0
    assert_state_is_the_transcript(engine, session_id, tiny)
    run_turn(engine, session_id, "Which one is older?")  # the conversation goes on from the chosen answer
    assert_state_is_the_transcript(engine, session_id, tiny)


def test_regenerate_and_undo_refuse_when_there_is_nothing_to_act_on(engine: ChatEngine) -> None:
    session = engine.create_session("empty")
    with pytest.raises(TurnRefused, match="no answer to regenerate"):
        engine.regenerate(session.id, SHORT)
    with pytest.raises(TurnRefused, match="no turn to undo"):
        engine.undo(session.id)
    with pytest.raises(TurnRefused, match="not a question"):
        engine.edit(session.id, 0, "Hello?", SHORT)
    assert engine.store.get(session.id).version == session.version


def test_undo_removes_the_last_turn_and_its_state(engine: ChatEngine, tiny: Any) -> None:
    session_id = two_turns(engine)
    finish(engine.regenerate(session_id, SAMPLED))
    view = engine.undo(session_id)
    assert [m.text for m in view.messages] == [m.text for m in engine.messages(session_id)]
    assert [m.role for m in view.messages] == ["user", "assistant"] and view.variants == {}
    assert view.messages[0].text == "What does a kettle do?"
    assert_state_is_the_transcript(engine, session_id, tiny)


def test_editing_a_question_branches_and_leaves_the_original_as_it_was(engine: ChatEngine, tiny: Any) -> None:
    session_id = two_turns(engine)
    original = (engine.messages(session_id), engine.store.get(session_id))
    branch, ticket = engine.edit(session_id, 2, "And a samovar?", SHORT)
    result = finish(ticket)
    assert branch.info.parent_id == session_id and branch.info.branch_point == 2
    assert [m.text for m in engine.messages(branch.info.id)][:3] == [
        "What does a kettle do?", original[0][1].text, "And a samovar?"]
    assert engine.messages(branch.info.id)[-1].text == result.answer
    assert_state_is_the_transcript(engine, branch.info.id, tiny)
    assert (engine.messages(session_id), engine.store.get(session_id)) == original

    engine.index_folder(str(FIXTURE_REPO), "kettle")
    engine.set_collection(session_id, "kettle")
    engine.delete_collection("kettle")
    sessions = len(engine.list_sessions())
    with pytest.raises(TurnRefused, match="which was deleted"):
        engine.edit(session_id, 0, "And a samovar?", SHORT)
    assert len(engine.list_sessions()) == sessions  # refused: no empty branch left behind
    engine.set_collection(session_id, None)

    first = engine.branch(session_id, 0)  # from the very start: only the system prompt
    assert first.messages == [] and first.info.parent_id == session_id
    assert_state_is_the_transcript(engine, first.info.id, tiny)


@pytest.mark.parametrize("engines", [1, 2], ids=["one-engine", "two-engines"])
def test_concurrent_regenerates_lose_nothing(make_engine: Any, tiny: Any, db_url: str, engines: int) -> None:
    """Two tabs regenerate the same answer at once: on one engine the queue runs them in turn; on two (two
    processes over one database) the second to store finds the first's answer and keeps both."""
    pool = [make_engine(tiny, database_url=db_url) for _ in range(engines)]
    session_id = two_turns(pool[0])
    first = pool[0].messages(session_id)[-1].text
    results: list[TurnResult] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def tab(engine: ChatEngine, seed: int) -> None:
        try:
            barrier.wait()
            results.append(finish(engine.regenerate(session_id, TurnOptions(max_new_tokens=6, source_tokens=400,
                                                                           temperature=1.0, seed=seed))))
        except BaseException as exc:  # reported below, with the other tab's outcome
            errors.append(exc)

    threads = [threading.Thread(target=tab, args=(pool[i % engines], seed)) for i, seed in enumerate((11, 12))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and len(results) == 2
    place = pool[0].variants(session_id)[3]
    assert sorted(a.text for a in place.answers) == sorted([first] + [r.answer for r in results])
    assert engine_last(pool[0], session_id) == place.answers[place.chosen].text
    assert len(pool[0].messages(session_id)) == 4
    expected, _ = replay(tiny, pool[0].messages(session_id), pool[0].store.get(session_id).system_prompt,
                         progress=False)
    assert_same_state(pool[0].store.load(session_id, tiny, progress=False).state, expected)
    for engine in pool:  # each engine's next turn starts from the stored answer, not a stale one
        run_turn(engine, session_id, "Thanks.")
        assert_state_is_the_transcript(engine, session_id, tiny)


def engine_last(engine: ChatEngine, session_id: int) -> str:
    return engine.messages(session_id)[-1].text


def test_the_page_refuses_what_cannot_be_done_and_keeps_what_it_showed(make_engine: Any, tiny: Any) -> None:
    """The page's handlers (ui/app.py) on the tiny model: advice as it is, the chat as it was, no branch made."""
    import gradio as gr

    from ui import render
    from ui.app import Page

    engine = make_engine(tiny)
    page = Page(engine)
    session = engine.create_session()
    settings = (0, 0.0, 8, "teacher")
    shown = list(page.regenerate(session.id, [], *settings))[-1]
    assert shown.notice == "⚠️ There is no answer to regenerate yet; ask a question first."
    assert page.undo(session.id, "teacher").notice == "⚠️ There is no turn to undo in this session."

    run_turn(engine, session.id, "What does a kettle do?")
    history = render.chat_history(engine.messages(session.id))

    def edit(index: int, value: str) -> Any:
        data = gr.EditData(None, {"index": index, "value": value, "previous_value": history[index]["content"]})
        return list(page.edit(data, session.id, history, *settings))[-1]

    sessions = len(engine.list_sessions())
    assert edit(1, "a new answer").notice.startswith("⚠️ Only your questions can be edited")
    assert edit(0, "   ").notice == "⚠️ The message is empty; type a question first."
    assert edit(0, "   ").chat == history and len(engine.list_sessions()) == sessions

    updates = page.regenerate(session.id, history, *settings)
    assert next(updates).chat[-1]["content"] == "…"  # the old answer makes way while the new one streams
    regenerated = list(updates)
    assert regenerated[-1].answer_page == "answer 2/2" and regenerated[-1].notice == ""
    back = page.page_answer(session.id, -1, "teacher")
    assert back.answer_page == "answer 1/2" and back.chat == history  # the first answer, exactly as it was shown
    assert "Last turn" in regenerated[-1].status

    data = gr.EditData(None, {"index": 0, "value": "What does a samovar do?", "previous_value": "x"})
    switched, *_, branched = list(page.edit(data, session.id, history, *settings))
    branch = engine.store.get(branched.session)
    assert branch.parent_id == session.id and switched.remembered == branch.id  # the page opens the branch
    assert branched.chat[0]["content"] == "What does a samovar do?"
    assert "Asked in a new branch" in branched.notice and "⚠️" not in branched.notice
    assert engine.messages(session.id)[0].text == "What does a kettle do?"
