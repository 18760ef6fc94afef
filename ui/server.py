"""Starts the web UI: one chat engine (model, sessions, collections) behind a Gradio page and API."""

from __future__ import annotations

import logging

from app.config import Settings
from ui.auth import AUTH_MESSAGE, LoginThrottle, RememberClient, api_access, parse_auth

__all__ = ["launch", "parse_auth", "serve"]
log = logging.getLogger(__name__)


def launch(engine: object, host: str, port: int, auth: str | tuple[str, str] | None = None, *, block: bool = True,
           throttle: LoginThrottle | None = None) -> object:
    """Build the page for `engine` and start serving it, with the OpenAI-compatible API under /v1;
    returns the running Blocks when not blocking.

    `auth` (`user:password` or a pair) turns on the login page, each client's wrong passwords slowed down
    by a `LoginThrottle` (`throttle` to pass one with another clock)."""
    from starlette.middleware import Middleware
    from starlette.routing import Mount

    from ui.app import CSS, build_app
    from ui.openai_api import build_openai_app

    credentials = parse_auth(auth) if isinstance(auth, str) or auth is None else auth
    if credentials is not None and throttle is None:
        throttle = LoginThrottle(*credentials)
    demo = build_app(engine)
    demo.queue(default_concurrency_limit=4)
    exports = engine.settings.data_dir / "exports"
    exports.mkdir(parents=True, exist_ok=True)
    demo.launch(server_name=host, server_port=port, auth=throttle if credentials else None,
                auth_message=AUTH_MESSAGE if credentials else None, show_error=True, css=CSS,
                allowed_paths=[str(exports)], prevent_thread_lock=not block, quiet=not block, footer_links=[],
                app_kwargs={"middleware": [Middleware(RememberClient)],
                            "routes": [Mount("/v1", app=build_openai_app(engine, api_access(throttle)))]})
    return demo


def serve(settings: Settings, host: str, port: int, auth: str | tuple[str, str] | None = None) -> None:
    from app.engine import ChatEngine

    if isinstance(auth, str):
        parse_auth(auth)  # a bad --auth fails before the model loads
    engine = ChatEngine(settings)
    served = engine.served()  # load now, so the first question does not wait for it
    log.info("serving %s on %s%s", served.label, served.device, f" ({served.note})" if served.note else "")
    log.info("open http://%s:%d/", host, port)
    launch(engine, host, port, auth)
