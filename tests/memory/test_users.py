"""User accounts on SQLite and PostgreSQL: hashed passwords, API keys stored hashed and shown once, sessions
owned by their user and removed with them."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from memory.db import make_engine
from memory.sessions import SessionStore
from memory.users import Accounts, ApiKey, UnknownUser, User, UserExists


@pytest.fixture
def accounts(db_url: str) -> Accounts:
    return Accounts(make_engine(db_url))


def test_passwords_are_hashed_with_argon2_and_checked(accounts: Accounts, db_url: str) -> None:
    assert not accounts.any()
    ada = accounts.add("ada", "correct horse")
    assert accounts.any() and accounts.get("ada") == ada
    with accounts._db() as db:
        stored = db.scalar(select(User.password_hash).where(User.name == "ada"))
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert accounts.check_password("ada", "correct horse") == ada
    assert accounts.check_password("ada", "correct horsE") is None
    assert accounts.check_password("nobody", "correct horse") is None
    with pytest.raises(UserExists, match="exists already"):
        accounts.add("ada", "another password")
    for name, password, said in (("", "long enough", "user name"), ("a b", "long enough", "user name"),
                                 ("-x", "long enough", "user name"), ("bob", "short", "too short")):
        with pytest.raises(ValueError, match=said):
            accounts.add(name, password)
    with pytest.raises(UnknownUser, match="rillet users list"):
        accounts.get("bob")


def test_api_keys_are_shown_once_and_stored_hashed(accounts: Accounts) -> None:
    accounts.add("ada", "correct horse")
    bob = accounts.add("bob", "battery staple")
    first, second = accounts.create_key("bob"), accounts.create_key("bob")
    assert first != second and first.startswith("rk-") and len(first) > 40
    with accounts._db() as db:
        rows = db.scalars(select(ApiKey)).all()
    assert len(rows) == 2 and not any(first in (r.key_hash, r.shown) or second == r.key_hash for r in rows)
    assert accounts.user_for_key(first) == bob and accounts.user_for_key(second) == bob
    assert accounts.user_for_key(first[:-1] + ("A" if first[-1] != "A" else "B")) is None
    assert accounts.user_for_key("correct horse") is None
    assert [shown for shown, _ in accounts.keys("bob")] == [first[:10], second[:10]]
    assert accounts.revoke_keys("bob", first[:10]) == 1
    assert accounts.user_for_key(first) is None and accounts.user_for_key(second) == bob
    assert accounts.revoke_keys("bob") == 1 and accounts.user_for_key(second) is None


def test_sessions_belong_to_a_user_and_go_with_them(accounts: Accounts, db_url: str) -> None:
    store = SessionStore(make_engine(db_url))
    before = store.create("made before there were users")
    ada = accounts.add("ada", "correct horse")  # the first user takes the sessions made before
    bob = accounts.add("bob", "battery staple")
    assert store.get(before.id).owner_id == ada.id
    bobs = store.create("Bob's", owner_id=bob.id)
    nobodys = store.create("no owner")
    assert [s.id for s in store.list_sessions(owner_id=ada.id)] == [before.id]
    assert [s.id for s in store.list_sessions(owner_id=bob.id)] == [bobs.id]
    assert {s.id for s in store.list_sessions()} == {before.id, bobs.id, nobodys.id}
    assert store.set_owner(nobodys.id, bob.id).owner_id == bob.id
    assert {u.name: (u.sessions, u.keys) for u in accounts.list()} == {"ada": (1, 0), "bob": (2, 0)}

    accounts.create_key("bob")
    assert sorted(accounts.remove("bob")) == sorted([bobs.id, nobodys.id])
    assert [s.id for s in store.list_sessions()] == [before.id]
    assert [u.name for u in accounts.list()] == ["ada"]
