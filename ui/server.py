"""Starts the web UI. (Placeholder page until the chat UI lands.)"""

from __future__ import annotations

from app.config import Settings


def serve(settings: Settings, host: str, port: int, auth: str | None = None) -> None:
    import gradio as gr

    from app.database import upgrade

    upgrade(settings.db_url)
    with gr.Blocks(title="Rillet") as demo:
        gr.Markdown("# Rillet\nThe chat interface is being built. `rillet doctor` shows the state of each part.")
    credentials = tuple(auth.split(":", 1)) if auth else None
    demo.launch(server_name=host, server_port=port, auth=credentials, show_error=True)
