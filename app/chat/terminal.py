"""`rillet chat`: the chat engine in a terminal, with the web app's sessions and collections."""

from __future__ import annotations

from rich.console import Console

from app.chat.events import TurnProgress
from app.config import Settings
from app.terminal_text import line, text, visible
from backbone.errors import UserError, shown


def run(settings: Settings, console: Console, *, model: str | None, collection: str | None, session_id: int | None,
        options: dict[str, object]) -> int:
    """The read-answer loop; returns the exit code. Ctrl-C during an answer stops it (the part written is kept)."""
    from app.chat.units import human_bytes
    from app.engine import ChatEngine, TurnOptions

    engine = ChatEngine(settings)
    try:
        turn_options = TurnOptions(model=model, **options)  # type: ignore[arg-type]
        served = engine.served(model)
        if session_id is None:
            info = engine.create_session("Terminal chat", collection)
        else:
            info = engine.store.get(session_id)
            if collection is not None:
                info = engine.set_collection(session_id, collection or None)
        view = engine.open_session(info.id, model)
    except UserError as exc:
        console.print(f"[red]{text(exc)}")
        return 2
    if served.note:
        console.print(f"[yellow]{text(served.note)}")
    if view.notice:
        console.print(f"[yellow]{text(view.notice)}")
    for message in view.messages[-4:]:
        if message.role != "system":
            console.print(f"[dim]{'you' if message.role == 'user' else 'rillet'}> {text(message.text)}")
    console.print(f"[dim]Session {info.id} “{line(view.info.title)}” · {served.label} on {served.device} · "
                  f"{view.state_tokens:,} tokens, state {human_bytes(view.state_bytes)} · "
                  f"collection {line(view.info.collection or '(none)')}. Ctrl-C stops an answer; an empty line quits.")
    unsaved = 0  # answers written but not stored: the closing line must not call the session saved
    while True:
        try:
            message = console.input("[bold]you> ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not message:
            break
        try:
            ticket = engine.ask(info.id, message, turn_options)
        except UserError as exc:
            console.print(f"[red]{text(exc)}")
            continue
        console.print("[bold]rillet> ", end="")
        events, turn = iter(ticket), TurnProgress()
        while True:
            try:
                event = next(events)  # not events.follow: Ctrl-C here must not end the iteration
            except KeyboardInterrupt:
                ticket.cancel()
                continue
            except StopIteration:
                break
            if not turn.add(event):
                continue
            if turn.delta:
                console.print(visible(turn.delta), end="", markup=False, highlight=False, soft_wrap=True)
            elif turn.stage == "waiting":
                console.print(f"[dim](waiting: {(turn.ahead or 0) + 1} ahead) ", end="")
            elif turn.stage == "finished":
                result = turn.result
                console.print(" [dim](stopped)" if result.stop_reason == "cancelled" else "")
                if result.citations:
                    console.print("[dim]sources: " + ", ".join(line(c.citation) for c in result.citations))
                if result.notice:
                    console.print(f"[yellow]{text(result.notice)}")
            elif turn.stage == "failed":
                unsaved += 1
                console.print(f"\n[red]{text(shown(turn.error))}")  # the model queue logged a bug's traceback
            elif turn.stage == "cancelled":
                console.print("\n[yellow]Cancelled before it started; nothing was stored.")
    if unsaved:
        console.print(f"[yellow]Session {info.id}: {unsaved} answer{'s were' if unsaved > 1 else ' was'} not saved "
                      f"(see above); every other turn is kept. `rillet chat --session {info.id}` continues it.")
        return 1
    console.print(f"[dim]Session {info.id} saved; `rillet chat --session {info.id}` continues it.")
    return 0
