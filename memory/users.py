"""User accounts: names, passwords and API keys, for a server that many people share.

Passwords are stored as Argon2id hashes (argon2-cffi; its defaults, rehashed when they change). API keys
are 256 random bits shown once when made; only their SHA-256 is stored, which is enough for a secret that
long (a slow hash protects guessable passwords, and a random key cannot be guessed) and lets every API
request find its key with one indexed lookup. Removing a user removes their keys and their sessions.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, ForeignKey, String, delete, func, insert, literal, select, update
from sqlalchemy.orm import Mapped, mapped_column

from backbone.errors import InvalidRequest
from memory.db import Base, make_sessionmaker, utcnow

KEY_PREFIX = "rk-"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MIN_PASSWORD = 8


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    shown: Mapped[str] = mapped_column(String(16))  # the key's first characters, to tell keys apart in lists
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SessionOwner(Base):
    """Which user a session belongs to, on a server with accounts (a table of its own, so that the sessions
    table stays as it was: a session made before there were users has no row)."""

    __tablename__ = "session_owners"

    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)


@dataclass(frozen=True)
class UserInfo:
    """A user as the store hands it out; two are equal when they are the same user."""

    id: int
    name: str
    created_at: datetime = field(compare=False)
    keys: int = field(default=0, compare=False)
    sessions: int = field(default=0, compare=False)


class UserExists(InvalidRequest):
    """A user of that name exists already."""


class UnknownUser(InvalidRequest, LookupError):
    """No user has that name."""


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Accounts:
    """The users of one database. Safe to use from many threads."""

    def __init__(self, engine: Engine) -> None:
        from argon2 import PasswordHasher

        self._db = make_sessionmaker(engine)
        self._hasher = PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))  # checked for unknown names: same time taken

    def any(self) -> bool:
        """Whether any user exists (then the server asks everyone to log in)."""
        with self._db() as db:
            return db.scalar(select(User.id).limit(1)) is not None

    def add(self, name: str, password: str) -> UserInfo:
        """A new user. The first one also takes the sessions made before there were users."""
        from memory.models import ChatSession

        if not NAME.fullmatch(name or ""):
            raise InvalidRequest("A user name has 1 to 64 letters, digits or _.@- and starts with a letter or digit.")
        if len(password or "") < MIN_PASSWORD:
            raise InvalidRequest(f"The password is too short; use at least {MIN_PASSWORD} characters.")
        with self._db.begin() as db:
            if db.scalar(select(User.id).where(User.name == name)) is not None:
                raise UserExists(f"A user named {name!r} exists already; pick another name, or remove it first.")
            first = db.scalar(select(User.id).limit(1)) is None
            user = User(name=name, password_hash=self._hasher.hash(password))
            db.add(user)
            db.flush()
            if first:
                owned = select(SessionOwner.session_id)
                db.execute(insert(SessionOwner).from_select(
                    ["session_id", "user_id"],
                    select(ChatSession.id, literal(user.id)).where(ChatSession.id.not_in(owned))))
            return UserInfo(user.id, user.name, user.created_at)

    def list(self) -> list[UserInfo]:
        keys = select(func.count(ApiKey.id)).where(ApiKey.user_id == User.id).correlate(User).scalar_subquery()
        sessions = (select(func.count(SessionOwner.session_id)).where(SessionOwner.user_id == User.id)
                    .correlate(User).scalar_subquery())
        with self._db() as db:
            return [UserInfo(u.id, u.name, u.created_at, k, s)
                    for u, k, s in db.execute(select(User, keys, sessions).order_by(User.name))]

    def get(self, name: str) -> UserInfo:
        with self._db() as db:
            user = db.scalar(select(User).where(User.name == name))
            if user is None:
                raise UnknownUser(f"No user is named {name!r}; `rillet users list` shows them.")
            return UserInfo(user.id, user.name, user.created_at)

    def remove(self, name: str) -> list[int]:
        """Remove a user with their API keys and sessions; the ids of the sessions removed (whose recall
        indexes the caller deletes)."""
        from memory.models import ChatSession

        user = self.get(name)
        with self._db.begin() as db:
            owned = list(db.scalars(select(SessionOwner.session_id).where(SessionOwner.user_id == user.id)))
            db.execute(delete(ChatSession).where(ChatSession.id.in_(owned)))
            db.execute(delete(User).where(User.id == user.id))
        return owned

    def check_password(self, name: str, password: str) -> UserInfo | None:
        """The user, when the password is theirs; None otherwise (after the same work either way)."""
        from argon2.exceptions import InvalidHashError, VerificationError

        with self._db() as db:
            user = db.scalar(select(User).where(User.name == name))
        try:
            self._hasher.verify(user.password_hash if user else self._dummy, password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None:
            return None
        if self._hasher.check_needs_rehash(user.password_hash):
            with self._db.begin() as db:
                db.execute(update(User).where(User.id == user.id)
                           .values(password_hash=self._hasher.hash(password)))
        return UserInfo(user.id, user.name, user.created_at)

    def create_key(self, name: str) -> str:
        """A new API key for the user; this is the only time it can be seen."""
        user = self.get(name)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._db.begin() as db:
            db.add(ApiKey(user_id=user.id, key_hash=_key_hash(key), shown=key[:10]))
        return key

    def keys(self, name: str) -> list[tuple[str, datetime]]:
        """The user's keys as their first characters and when they were made."""
        user = self.get(name)
        with self._db() as db:
            return [(k.shown, k.created_at) for k in db.scalars(
                select(ApiKey).where(ApiKey.user_id == user.id).order_by(ApiKey.created_at))]

    def revoke_keys(self, name: str, starting: str = "") -> int:
        """Delete the user's keys that start with `starting` (all of them by default); how many."""
        user = self.get(name)
        with self._db.begin() as db:
            rows = db.scalars(select(ApiKey).where(ApiKey.user_id == user.id)).all()
            doomed = [k for k in rows if k.shown.startswith(starting[:10])]
            for key in doomed:
                db.delete(key)
            return len(doomed)

    def user_for_key(self, key: str) -> UserInfo | None:
        if not key.startswith(KEY_PREFIX):
            return None
        with self._db() as db:
            user = db.scalar(select(User).join(ApiKey, ApiKey.user_id == User.id)
                             .where(ApiKey.key_hash == _key_hash(key)))
            return None if user is None else UserInfo(user.id, user.name, user.created_at)
