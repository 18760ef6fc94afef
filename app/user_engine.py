"""The chat engine as one user of a server with accounts may use it.

A user sees, opens, exports, continues, renames and deletes only their own sessions: another user's session
is answered exactly like one that does not exist (`SessionNotFoundError`), so its id tells nothing. New and
imported sessions are theirs. Collections are shared: everyone may search them; the one who made a
collection owns it, and only they may delete it (one made before there were users, anybody).

Deny by default: `UserEngine` offers the engine's methods named below, and checks ownership first for every
other method of the engine whose first parameter is `session_id` (so a session operation added to the engine
later is checked too); anything else is not available to a user.
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.engine import ChatEngine
from backbone.errors import InvalidRequest
from memory.errors import SessionNotFoundError
from memory.records import SessionInfo
from memory.users import UserInfo
from retrieval.catalog import Collection, CollectionOwner
from retrieval.service import CollectionNotFoundError

# Engine attributes that concern no session: passed through as they are.
SHARED = frozenset({"settings", "served", "check_message", "list_collections", "index_project_docs", "registry",
                    "retrieval"})


class NotYourCollection(InvalidRequest):
    """Only a collection's owner may delete it."""


class UserEngine:
    """`ChatEngine` for `user`: their sessions only, collections shared."""

    def __init__(self, engine: ChatEngine, user: UserInfo) -> None:
        self.engine, self.user = engine, user

    # --- sessions --------------------------------------------------------------------------------
    def own(self, session_id: int) -> SessionInfo:
        """The session when it is this user's; `SessionNotFoundError` otherwise (as if it did not exist)."""
        info = self.engine.store.get(session_id)
        if info.owner_id != self.user.id:
            raise SessionNotFoundError(session_id)
        return info

    def session(self, session_id: int) -> SessionInfo:
        return self.own(session_id)

    def list_sessions(self, limit: int = 50) -> list[SessionInfo]:
        return self.engine.store.list_sessions(limit=limit, owner_id=self.user.id)

    def create_session(self, title: str = "New chat", collection: str | None = None) -> SessionInfo:
        info = self.engine.create_session(title, collection)
        return self.engine.store.set_owner(info.id, self.user.id)

    def import_session(self, data: str | bytes) -> SessionInfo:
        info = self.engine.import_session(data)
        return self.engine.store.set_owner(info.id, self.user.id)

    def export_session(self, session_id: int, folder: Path, fmt: str = "json") -> Path:
        """Exported into a folder of its own with an unguessable name: the page serves exports by path."""
        self.own(session_id)
        return self.engine.export_session(session_id, folder / secrets.token_hex(16), fmt)

    # --- collections -----------------------------------------------------------------------------
    def index_folder(self, folder: str, name: str | None = None, progress: Any = None) -> Any:
        report = self.engine.index_folder(folder, name, progress)
        self._claim_collection(report.collection)
        return report

    def delete_collection(self, name: str) -> None:
        owner = self.collection_owner(name)
        if owner is not None and owner != self.user.id:
            raise NotYourCollection(f"The collection {name!r} belongs to another user; only they can delete it.")
        self.engine.delete_collection(name)

    def collection_owner(self, name: str) -> int | None:
        with self.engine.retrieval.db() as db:
            found = db.execute(select(Collection.id, CollectionOwner.user_id).outerjoin(
                CollectionOwner, CollectionOwner.collection_id == Collection.id).where(Collection.name == name)).first()
        if found is None:
            raise CollectionNotFoundError(f"No collection named {name!r}.")
        return found[1]

    def _claim_collection(self, name: str) -> None:
        """A collection nobody owns yet becomes this user's (the one who indexed it first)."""
        with self.engine.retrieval.db.begin() as db:
            collection_id = db.scalar(select(Collection.id).where(Collection.name == name))
            if collection_id is not None and db.get(CollectionOwner, collection_id) is None:
                db.add(CollectionOwner(collection_id=collection_id, user_id=self.user.id))

    # --- everything else -------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name in SHARED:
            return getattr(self.engine, name)
        method = getattr(type(self.engine), name, None)
        if not name.startswith("_") and callable(method) and _takes_session_first(method):
            bound = getattr(self.engine, name)

            def checked(session_id: int, *args: Any, **kwargs: Any) -> Any:
                self.own(session_id)
                return bound(session_id, *args, **kwargs)

            return checked
        raise AttributeError(f"{name!r} is not available to a user of a server with accounts")


def _takes_session_first(method: Callable[..., Any]) -> bool:
    parameters = list(inspect.signature(method).parameters)
    return len(parameters) > 1 and parameters[1] == "session_id"
