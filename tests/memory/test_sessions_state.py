"""Saved states on SQLite and PostgreSQL: exact reload, exact continuation, branching, damage, model changes."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text, update

from backbone.generate import LanguageModel
from memory.codec import CodecOptions, encode_state, sha256
from memory.errors import SessionConflictError
from memory.models import StateSnapshot
from memory.policy import SnapshotPolicy
from memory.records import ChatMessage
from memory.sessions import SessionStore
from memory.transcript import message_pieces, replay
from tests.memory.chat import Chat, states_equal
from tests.memory.tiny import greedy


@pytest.fixture(params=["kv-cache", "recurrent"])
def model(request: pytest.FixtureRequest, models: dict[str, tuple[LanguageModel, LanguageModel]]) -> LanguageModel:
    """Both kinds of state: the teacher's KV cache and the student's recurrent state."""
    return models[request.param][0]

TURNS = [("My locker code is 4817.", "Noted: 4817."), ("What is the capital of Peru?", "Lima."),
         ("Write a haiku about rain.",
          "Soft rain on the roof,\nthe gutters hum a long note,\nsleep comes in grey waves."),
         ("Thanks!", "You are welcome.")]


def build(store: SessionStore, model, turns=TURNS) -> Chat:
    chat = Chat(store, model, store.create("memory test", system_prompt="You are terse.").id)
    for user, assistant in turns:
        chat.turn(user, assistant)
    return chat


def snapshot_ordinals(store: SessionStore, session_id: int, fingerprint: str | None = None) -> list[int]:
    return [s.ordinal for s in store.snapshots(session_id) if fingerprint in (None, s.model_fingerprint)]


@pytest.mark.parametrize("codec", [CodecOptions(), CodecOptions(compress=True)], ids=["raw", "zstd"])
def test_reloaded_state_is_bit_identical_and_decodes_the_same_tokens(db_url: str, codec: CodecOptions,
                                                                     model: LanguageModel) -> None:
    from memory.db import make_engine

    engine = make_engine(db_url)
    chat = build(SessionStore(engine, codec=codec), model)
    uninterrupted = greedy(model, chat.loaded.state.clone(), 24)
    engine.dispose()

    engine = make_engine(db_url)  # as after a restart: a new engine, nothing kept in memory
    reloaded = SessionStore(engine, codec=codec).load(chat.id, model, progress=False)
    engine.dispose()
    assert reloaded.replayed_tokens == 0 and reloaded.notice is None
    assert reloaded.restored_from == 2 * len(TURNS) - 1
    assert states_equal(reloaded.state, chat.loaded.state)
    assert reloaded.state.metadata() == chat.loaded.state.metadata()
    assert greedy(model, reloaded.state, 24) == uninterrupted
    assert [(m.role, m.text) for m in reloaded.messages] == [(r, t) for pair in TURNS for r, t in
                                                              zip(("user", "assistant"), pair, strict=True)]


def test_bfloat16_snapshots_are_half_the_size_and_close(store: SessionStore, model: LanguageModel) -> None:
    half = SessionStore(store.engine, codec=CodecOptions(bfloat16=True))
    chat = build(half, model)
    exact = build(store, model)
    sizes = {name: s.snapshots(c.id)[-1].byte_size for name, s, c in (("half", half, chat), ("exact", store, exact))}
    assert sizes["half"] < 0.6 * sizes["exact"]
    loaded = half.load(chat.id, model, progress=False)
    assert loaded.replayed_tokens == 0 and half.snapshots(chat.id)[-1].dtype == "bfloat16"
    for name, tensor in chat.loaded.state.to_tensors().items():
        restored = loaded.state.to_tensors()[name]
        assert restored.dtype == tensor.dtype
        assert (restored - tensor).abs().max() <= tensor.abs().max() * 2**-8


def test_snapshots_are_thinned_in_the_same_transaction(store: SessionStore, model: LanguageModel) -> None:
    policy = SnapshotPolicy(every=4, per_band=2, keep_last=2)
    thin = SessionStore(store.engine, policy=policy)
    chat = build(thin, model, [(f"question {i}", f"answer {i}") for i in range(15)])
    assert snapshot_ordinals(thin, chat.id) == sorted(p - 1 for p in policy.keep(range(2, 31, 2)))
    assert len(snapshot_ordinals(thin, chat.id)) < 15


@pytest.mark.parametrize("keep", [0, 6, 8, 10, 12])
def test_fork_restores_the_nearest_snapshot_and_replays_only_the_gap(store: SessionStore, model: LanguageModel,
                                                                     keep: int) -> None:
    thin = SessionStore(store.engine, policy=SnapshotPolicy(every=4, per_band=1, keep_last=1))
    chat = build(thin, model, [(f"question {i}", f"answer {i}") for i in range(6)])
    parent_before = (thin.get(chat.id), thin.messages(chat.id))
    kept = snapshot_ordinals(thin, chat.id)
    nearest = max((o for o in kept if o <= keep - 1), default=None)

    branch = thin.branch(chat.id, keep, model, progress=False)

    messages = parent_before[1]
    tokens = lambda ms: sum(len(p) for m in ms for p in message_pieces(model.tokenizer, m.role, m.text))  # noqa: E731
    assert branch.restored_from == nearest
    if nearest is None:
        system = tokens([ChatMessage("system", "You are terse.")])
        assert branch.replayed_tokens == system + tokens(messages[:keep])
    else:
        assert branch.replayed_tokens == tokens(messages[nearest + 1 : keep])
    expected, _ = replay(model, messages[:keep], "You are terse.", progress=False)
    assert states_equal(branch.state, expected)
    assert (branch.info.parent_id, branch.info.branch_point, branch.info.message_count) == (chat.id, keep, keep)
    assert [m.text for m in branch.messages] == [m.text for m in messages[:keep]]
    assert (thin.get(chat.id), thin.messages(chat.id)) == parent_before  # the old branch is untouched

    # The branch is a session like any other: edit the next question and go on from there.
    edited = Chat(thin, model, branch.info.id)
    assert edited.loaded.replayed_tokens == (0 if keep else expected.num_tokens)
    edited.turn("an edited question", "a new answer")
    assert [m.text for m in thin.messages(edited.id)][keep:] == ["an edited question", "a new answer"]


def test_replace_discards_the_later_turns_cleanly(store: SessionStore, model: LanguageModel) -> None:
    chat = build(store, model)
    stale_version = chat.loaded.version
    rewound = store.branch(chat.id, 4, model, fork=False, progress=False)
    assert rewound.info.id == chat.id and rewound.info.message_count == 4
    assert rewound.info.version == stale_version + 1
    assert max(snapshot_ordinals(store, chat.id)) == 3
    expected, _ = replay(model, store.messages(chat.id), "You are terse.", progress=False)
    assert states_equal(rewound.state, expected) and rewound.info.token_count == expected.num_tokens
    with pytest.raises(SessionConflictError, match="reload"):  # a tab still holding the old branch
        chat.turn("late", "message")
    assert store.get(chat.id).message_count == 4
    reloaded = store.load(chat.id, model, progress=False)
    assert reloaded.replayed_tokens == 0 and states_equal(reloaded.state, expected)


def damage(store: SessionStore, snapshot_id: int, how: str, model: LanguageModel | None = None,
           other_model: LanguageModel | None = None) -> None:
    sqlite = store.engine.dialect.name == "sqlite"
    with store.engine.begin() as conn:
        blob = conn.scalar(select(StateSnapshot.blob).where(StateSnapshot.id == snapshot_id))
        raw = {  # what a damaged row may hold, written past the ORM's types
            "text, valid UTF-8": "CAST('just some text' AS TEXT)" if sqlite else "convert_to('just some text', 'UTF8')",
            "text, not UTF-8": "CAST(X'FFFE00' AS TEXT)" if sqlite else "'\\xfffe00'::bytea",
            "a number": "12345" if sqlite else "'\\x3132333435'::bytea",
        }.get(how)
        if raw is not None:
            conn.execute(text(f"UPDATE state_snapshots SET blob = {raw} WHERE id = {snapshot_id}"))
            return
        if how == "manifest not JSON":
            if sqlite:
                conn.execute(text(f"UPDATE state_snapshots SET manifest = '{{not json' WHERE id = {snapshot_id}"))
            else:  # PostgreSQL's json type refuses malformed JSON: a manifest of the wrong shape instead
                conn.execute(text(f"UPDATE state_snapshots SET manifest = '[1, 2]' WHERE id = {snapshot_id}"))
            return
        if how == "foreign model":  # a sound blob of another model's state, under this model's fingerprint
            state = replay(other_model, [ChatMessage("user", "other")], progress=False)[0]
            encoded = encode_state(state.to_tensors(), state.metadata(), model=other_model.fingerprint)
            change = {"blob": encoded.blob, "checksum": encoded.checksum, "manifest": encoded.manifest,
                      "byte_size": encoded.byte_size}
        else:
            change = {
                "flipped byte": {"blob": blob[:100] + bytes([blob[100] ^ 0x40]) + blob[101:]},
                "truncated": {"blob": blob[: len(blob) // 2]},
                "wrong checksum": {"checksum": "f" * 64},
                "wrong size": {"byte_size": len(blob) + 1},
            }[how]
        conn.execute(update(StateSnapshot).where(StateSnapshot.id == snapshot_id).values(**change))


@pytest.mark.parametrize("how", ["flipped byte", "truncated", "wrong checksum", "wrong size", "text, valid UTF-8",
                                 "text, not UTF-8", "a number", "manifest not JSON", "foreign model"])
@pytest.mark.parametrize("which", ["newest", "all"])
def test_damaged_snapshots_trigger_replay_not_a_crash(store: SessionStore, model: LanguageModel, how: str,
                                                      which: str, other_model: LanguageModel) -> None:
    chat = build(store, model)
    snaps = store.snapshots(chat.id)
    assert len(snaps) == 2
    damaged = snaps if which == "all" else snaps[-1:]
    for snap in damaged:
        damage(store, snap.id, how, model, other_model)

    loaded = store.load(chat.id, model, progress=False)

    assert "could not be used" in loaded.notice and "re-reading" in loaded.notice
    assert loaded.restored_from == (None if which == "all" else snaps[0].ordinal)
    assert states_equal(loaded.state, chat.loaded.state)
    assert greedy(model, loaded.state.clone(), 8) == greedy(model, chat.loaded.state.clone(), 8)
    # The damaged snapshots are gone and a sound one stands in their place.
    with store.engine.connect() as conn:
        stored = conn.execute(select(StateSnapshot.ordinal, StateSnapshot.blob, StateSnapshot.checksum)
                              .where(StateSnapshot.session_id == chat.id).order_by(StateSnapshot.ordinal)).all()
    assert all(sha256(blob) == checksum for _, blob, checksum in stored)
    assert stored[-1].ordinal == 2 * len(TURNS) - 1
    again = store.load(chat.id, model, progress=False)
    assert again.replayed_tokens == 0 and again.notice is None


def test_a_snapshot_of_another_model_is_never_fed_to_it(store: SessionStore, model: LanguageModel,
                                                        other_model: LanguageModel) -> None:
    chat = build(store, model)
    loaded = store.load(chat.id, other_model, progress=False)
    assert "different model" in loaded.notice
    assert loaded.restored_from is None
    rebuilt, read = replay(other_model, store.messages(chat.id), "You are terse.", progress=False)
    assert loaded.replayed_tokens == read and states_equal(loaded.state, rebuilt)
    # Had the old snapshot been fed, the state would be the first model's (same shapes, other values).
    assert not states_equal(loaded.state, chat.loaded.state)
    # Both models now have a current snapshot; neither needs to re-read.
    assert store.load(chat.id, model, progress=False).replayed_tokens == 0
    assert store.load(chat.id, other_model, progress=False).replayed_tokens == 0
    # Once the conversation moves on under the new model, the old model's states are dropped.
    going_on = Chat(store, other_model, chat.id)
    going_on.turn("Still there?", "Yes.")
    assert {s.model_fingerprint for s in store.snapshots(chat.id)} == {other_model.fingerprint}
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(StateSnapshot)
                           .where(StateSnapshot.model_fingerprint == model.fingerprint)) == 0
