"""Starts the web UI: one chat engine (model, sessions, collections) behind a Gradio page and API, with the
OpenAI-compatible API under /v1.

Who may use it: on a server with user accounts (`rillet users add`), everyone logs in (the page) or sends
an API key (/v1) and sees only their own sessions. Without accounts it runs as a single-user app: open on
a loopback address, behind one `user:password` when given. A non-loopback address without either is
refused, since everyone who reached it would read every session.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any

from app.config import Settings
from backbone.errors import UserError
from ui.auth import (
    AUTH_MESSAGE,
    LoginThrottle,
    RememberClient,
    account_throttles,
    api_access,
    key_access,
    parse_auth,
)

__all__ = ["OpenBindRefused", "check_bind", "launch", "parse_auth", "serve"]
log = logging.getLogger(__name__)

ACCOUNTS_MESSAGE = "Log in with your Rillet user name and password (`rillet users list` shows the users)."


class OpenBindRefused(UserError, PermissionError):
    """Serving every session, without a login, to a network address."""


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_bind(host: str, *, users: bool, credential: bool, open_without_login: bool = False) -> None:
    """`OpenBindRefused`, saying how to fix it, for a network address that nobody has to log in to."""
    if users or credential or open_without_login or is_loopback(host):
        return
    raise OpenBindRefused(
        f"Refusing to serve on {host}: there are no users, so everyone who can reach this address would read, "
        "continue and delete every session. Add a user first: `rillet users add NAME` (then everyone logs in; "
        "`rillet users key NAME` makes API keys). Or serve on this machine only: --host 127.0.0.1.")


def launch(engine: Any, host: str, port: int, auth: str | tuple[str, str] | None = None, *, block: bool = True,
           throttle: LoginThrottle | None = None, accounts: Any = None,
           key_throttle: LoginThrottle | None = None) -> object:
    """Build the page for `engine` and start serving it, with the OpenAI-compatible API under /v1;
    returns the running Blocks when not blocking.

    With `accounts` (memory.users.Accounts) that has users, everyone logs in as one of them and sees only
    their own sessions (page, Gradio API and /v1 alike); `throttle` and `key_throttle` slow down wrong
    passwords and API keys (pass them for another clock). Otherwise `auth` (`user:password` or a pair)
    turns on the login page, each client's wrong passwords slowed down by a `LoginThrottle`, and the API
    key is the password."""
    from starlette.middleware import Middleware
    from starlette.routing import Mount

    from app.user_engine import UserEngine
    from ui.app import CSS, build_app
    from ui.openai_api import build_openai_app
    from ui.per_user import RequestUserEngine

    if accounts is not None and accounts.any():
        if auth:
            log.warning("this server has user accounts: they log in, and the --auth credential is not used")
        page_throttle, keys = account_throttles(accounts)
        throttle, key_throttle = throttle or page_throttle, key_throttle or keys
        page_engine: Any = RequestUserEngine(engine, accounts)
        v1 = build_openai_app(engine, key_access(accounts, key_throttle),
                              lambda e, name: UserEngine(e, accounts.get(name)))
        auth_message = f"{ACCOUNTS_MESSAGE} {AUTH_MESSAGE}"
    else:
        credentials = parse_auth(auth) if isinstance(auth, str) or auth is None else auth
        if credentials is None:
            throttle = None
        elif throttle is None:
            throttle = LoginThrottle(*credentials)
        page_engine = engine
        v1 = build_openai_app(engine, api_access(throttle))
        auth_message = AUTH_MESSAGE
    demo = build_app(page_engine)
    demo.queue(default_concurrency_limit=4)
    exports = engine.settings.data_dir / "exports"
    exports.mkdir(parents=True, exist_ok=True)
    demo.launch(server_name=host, server_port=port, auth=throttle,
                auth_message=auth_message if throttle else None, show_error=True, css=CSS,
                allowed_paths=[str(exports)], prevent_thread_lock=not block, quiet=not block, footer_links=[],
                app_kwargs={"middleware": [Middleware(RememberClient)], "routes": [Mount("/v1", app=v1)]})
    return demo


def open_accounts(settings: Settings) -> Any:
    """The accounts of the configured database (migrated first); None for a throwaway in-memory one."""
    from app.database import IN_MEMORY, upgrade
    from memory.db import make_engine
    from memory.users import Accounts

    if settings.db_url in IN_MEMORY:
        return None
    upgrade(settings.db_url)
    return Accounts(make_engine(settings.db_url))


def serve(settings: Settings, host: str, port: int, auth: str | tuple[str, str] | None = None) -> None:
    from app.engine import ChatEngine

    if isinstance(auth, str):
        parse_auth(auth)  # a bad --auth fails before the model loads
    accounts = open_accounts(settings)
    users = accounts is not None and accounts.any()
    check_bind(host, users=users, credential=bool(auth), open_without_login=settings.open_without_login)
    engine = ChatEngine(settings)
    served = engine.served()  # load now, so the first question does not wait for it
    log.info("serving %s on %s%s", served.label, served.device, f" ({served.note})" if served.note else "")
    log.info("open http://%s:%d/ (OpenAI-compatible API: http://%s:%d/v1)%s", host, port, host, port,
             " - users log in" if users else "")
    launch(engine, host, port, auth, accounts=accounts)
