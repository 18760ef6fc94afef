"""Regenerated answers, choosing among them, undo and branches, on SQLite and PostgreSQL: after each, the
state equals a replay of the transcript, bit for bit, and is rebuilt from a snapshot plus the gap only."""

from __future__ import annotations

import pytest

from backbone.generate import LanguageModel
from memory.errors import InvalidTranscriptError, SessionConflictError
from memory.records import ChatMessage, SessionInfo
from memory.sessions import SessionStore
from memory.transcript import feed, replay
from tests.memory.chat import Chat, states_equal

SYSTEM = "You are terse."
TURNS = [("My locker code is 4817.", "Noted: 4817."), ("What is the capital of Peru?", "Lima."),
         ("Which ocean is west of Peru?", "The Pacific.")]


@pytest.fixture(params=["kv-cache", "recurrent"])
def model(request: pytest.FixtureRequest, models: dict[str, tuple[LanguageModel, LanguageModel]]) -> LanguageModel:
    return models[request.param][0]


def build(store: SessionStore, model: LanguageModel) -> Chat:
    chat = Chat(store, model, store.create("controls", system_prompt=SYSTEM).id)
    for user, assistant in TURNS:
        chat.turn(user, assistant)
    return chat


def regenerate(store: SessionStore, model: LanguageModel, session_id: int, answer: str) -> tuple[SessionInfo, int]:
    """What the engine does: the state before the last question, read over it and a new answer, stored in
    place of the last answer. Returns the stored session and the ordinal of the snapshot restored."""
    messages = store.messages(session_id)
    before = store.state_at(session_id, len(messages) - 2, model)
    feed(model, before.state, [messages[-2], ChatMessage("assistant", answer)])
    info = store.replace_answer(session_id, len(messages) - 1, answer, before.state,
                                model_fingerprint=model.fingerprint, expected_version=before.version)
    return info, before.restored_from


def assert_state_is_the_transcript(store: SessionStore, model: LanguageModel, session_id: int) -> None:
    """The stored state is current (nothing re-read on load) and equals a replay of the whole transcript."""
    loaded = store.load(session_id, model, progress=False)
    expected, _ = replay(model, store.messages(session_id), SYSTEM, progress=False)
    assert loaded.replayed_tokens == 0 and loaded.notice is None
    assert states_equal(loaded.state, expected)


def texts(store: SessionStore, session_id: int) -> list[str]:
    return [m.text for m in store.messages(session_id)]


def test_a_regenerated_answer_replaces_the_last_and_keeps_the_old_one(store: SessionStore,
                                                                      model: LanguageModel) -> None:
    chat = build(store, model)
    last = 2 * len(TURNS) - 1
    info, restored = regenerate(store, model, chat.id, "The Pacific Ocean, of course.")
    assert restored == last - 2  # the snapshot after the previous turn: only the question was re-read
    assert info.version == chat.loaded.version + 1 and info.message_count == 2 * len(TURNS)
    assert texts(store, chat.id)[-1] == "The Pacific Ocean, of course."
    place = store.variants(chat.id)[last]
    assert [a.text for a in place.answers] == ["The Pacific.", "The Pacific Ocean, of course."]
    assert place.chosen == 1
    assert_state_is_the_transcript(store, model, chat.id)

    regenerate(store, model, chat.id, "West of Peru lies the Pacific.")
    assert [a.text for a in store.variants(chat.id)[last].answers][2] == "West of Peru lies the Pacific."
    assert store.variants(chat.id)[last].chosen == 2
    assert_state_is_the_transcript(store, model, chat.id)


def test_choosing_an_alternative_puts_it_back_into_the_transcript_and_the_state(store: SessionStore,
                                                                                model: LanguageModel) -> None:
    chat = build(store, model)
    last = 2 * len(TURNS) - 1
    regenerate(store, model, chat.id, "A second answer.")
    chosen = store.choose(chat.id, last, 0, model)
    assert texts(store, chat.id)[-1] == "The Pacific."
    assert chosen.restored_from == last - 2
    expected, _ = replay(model, store.messages(chat.id), SYSTEM, progress=False)
    assert states_equal(chosen.state, expected)
    assert states_equal(chosen.state, chat.loaded.state)  # the first answer's state, exactly as it was
    place = store.variants(chat.id)[last]
    assert [a.text for a in place.answers] == ["The Pacific.", "A second answer."] and place.chosen == 0
    assert_state_is_the_transcript(store, model, chat.id)

    with pytest.raises(InvalidTranscriptError, match="no answer 3"):
        store.choose(chat.id, last, 2, model)
    going_on = Chat(store, model, chat.id)
    going_on.turn("And east?", "Brazil.")
    with pytest.raises(InvalidTranscriptError, match="Only the last answer"):
        store.choose(chat.id, last, 1, model)  # a later turn was written from the answer there now
    assert store.variants(chat.id)[last].chosen == 0  # kept, and still shown


def test_regenerating_needs_the_current_version_and_a_last_answer(store: SessionStore, model: LanguageModel) -> None:
    chat = build(store, model)
    messages = store.messages(chat.id)
    before = store.state_at(chat.id, len(messages) - 2, model)
    Chat(store, model, chat.id).turn("Meanwhile, in another tab.", "Yes.")
    feed(model, before.state, [messages[-2], ChatMessage("assistant", "late")])
    with pytest.raises(SessionConflictError):
        store.replace_answer(chat.id, len(messages) - 1, "late", before.state, model_fingerprint=model.fingerprint,
                             expected_version=before.version)
    assert store.variants(chat.id) == {} and "late" not in texts(store, chat.id)

    store.append_messages(chat.id, [ChatMessage("user", "A question with no answer yet")])
    current = store.get(chat.id)
    with pytest.raises(InvalidTranscriptError, match="Only the last answer"):
        store.replace_answer(chat.id, current.message_count - 2, "no", before.state,
                             model_fingerprint=model.fingerprint, expected_version=current.version)
    assert store.get(chat.id).version == current.version


def test_undo_drops_the_turn_with_its_alternatives(store: SessionStore, model: LanguageModel) -> None:
    chat = build(store, model)
    regenerate(store, model, chat.id, "Another answer.")
    undone = store.branch(chat.id, 2 * len(TURNS) - 2, model, fork=False, progress=False)
    assert texts(store, chat.id) == [t for pair in TURNS[:-1] for t in pair]
    assert store.variants(chat.id) == {}
    expected, _ = replay(model, store.messages(chat.id), SYSTEM, progress=False)
    assert states_equal(undone.state, expected)
    assert_state_is_the_transcript(store, model, chat.id)
    Chat(store, model, chat.id).turn("Which ocean is west of Peru?", "Pacific.")  # no old alternative resurfaces
    assert store.variants(chat.id) == {}


def test_a_branch_keeps_the_earlier_alternatives_and_leaves_the_original_alone(store: SessionStore,
                                                                              model: LanguageModel) -> None:
    chat = Chat(store, model, store.create("controls", system_prompt=SYSTEM).id)
    chat.turn(*TURNS[0])
    regenerate(store, model, chat.id, "I will remember 4817.")
    chat = Chat(store, model, chat.id)
    for user, assistant in TURNS[1:]:
        chat.turn(user, assistant)
    original = (store.messages(chat.id), store.variants(chat.id), store.get(chat.id).version)

    branch = store.branch(chat.id, 2, model, progress=False)  # edit the second question from here
    assert branch.info.parent_id == chat.id and branch.info.branch_point == 2
    assert [a.text for a in store.variants(branch.info.id)[1].answers] == ["Noted: 4817.", "I will remember 4817."]
    assert store.variants(branch.info.id)[1].chosen == 1
    edited = Chat(store, model, branch.info.id)
    edited.turn("What is the capital of Chile?", "Santiago.")
    expected, _ = replay(model, store.messages(branch.info.id), SYSTEM, progress=False)
    assert states_equal(edited.loaded.state, expected)
    assert_state_is_the_transcript(store, model, branch.info.id)
    assert (store.messages(chat.id), store.variants(chat.id), store.get(chat.id).version) == original
    assert_state_is_the_transcript(store, model, chat.id)
