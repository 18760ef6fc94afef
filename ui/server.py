"""Starts the web UI: one chat engine (model, sessions, collections) behind a Gradio page and API."""

from __future__ import annotations

import logging

from app.config import Settings

log = logging.getLogger(__name__)


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """`user:password` as Gradio's credentials pair."""
    if not auth:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth takes user:password, both non-empty (for example --auth ada:s3cret).")
    return user, password


def launch(engine: object, host: str, port: int, auth: str | None = None, *, block: bool = True) -> object:
    """Build the page for `engine` and start serving it; returns the running Blocks when not blocking."""
    from ui.app import CSS, build_app

    credentials = parse_auth(auth)
    demo = build_app(engine)
    demo.queue(default_concurrency_limit=4)
    exports = engine.settings.data_dir / "exports"
    exports.mkdir(parents=True, exist_ok=True)
    demo.launch(server_name=host, server_port=port, auth=credentials, show_error=True, css=CSS,
                allowed_paths=[str(exports)], prevent_thread_lock=not block, quiet=not block, footer_links=[])
    return demo


def serve(settings: Settings, host: str, port: int, auth: str | None = None) -> None:
    from app.engine import ChatEngine

    parse_auth(auth)  # a bad --auth fails before the model loads
    engine = ChatEngine(settings)
    served = engine.served()  # load now, so the first question does not wait for it
    log.info("serving %s on %s%s", served.label, served.device, f" ({served.note})" if served.note else "")
    log.info("open http://%s:%d/", host, port)
    launch(engine, host, port, auth)
