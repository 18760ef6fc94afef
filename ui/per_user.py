"""The engine as whoever sent the Gradio request being handled may use it (a server with accounts).

The page (ui/app.py) and its Gradio API (ui/api.py) are written against one engine. On a server with
accounts they get this object instead: every attribute is looked up on the `UserEngine` of the logged-in
user of the request in progress (Gradio keeps it in `gradio.context.LocalContext.request` while a handler
runs), so each handler sees that user's sessions only, with no change to the handlers.
"""

from __future__ import annotations

from typing import Any

from app.engine import ChatEngine
from app.user_engine import UserEngine
from backbone.errors import UserError

BUILD_TIME = frozenset({"settings"})  # read while the page is laid out, before any request


class NotLoggedIn(UserError, PermissionError):
    """A request without a logged-in user reached a handler."""


def request_user() -> str | None:
    """The logged-in user name of the Gradio request being handled, if any."""
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    return getattr(request, "username", None) if request is not None else None


class RequestUserEngine:
    """Looks each attribute up on the engine of the user of the request in progress."""

    def __init__(self, engine: ChatEngine, accounts: Any) -> None:
        self._engine, self._accounts = engine, accounts

    def current(self) -> UserEngine:
        name = request_user()
        if not name:
            raise NotLoggedIn("Log in first: this server has user accounts.")
        return UserEngine(self._engine, self._accounts.get(name))

    def __getattr__(self, name: str) -> Any:
        if name in BUILD_TIME:
            return getattr(self._engine, name)
        return getattr(self.current(), name)
