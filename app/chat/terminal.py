"""`rillet chat`: the chat engine in a terminal, with the web app's sessions and collections."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console

from app.chat.commands import HELP, Command, CommandError, parse
from app.chat.events import TurnProgress
from app.config import Settings
from app.terminal_text import line, text, visible
from backbone.errors import UserError, shown

if TYPE_CHECKING:
    from app.engine import ChatEngine, TurnOptions
    from memory.records import ChatMessage, SessionInfo, Variants


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
    console.print("[dim]/help lists the commands (/regenerate, /edit N text, /undo, /branch N, ...).")
    controls = Controls(engine, console, info.id, turn_options)
    while True:
        try:
            line_typed = console.input("[bold]you> ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not line_typed:
            break
        try:
            controls.handle(parse(line_typed))
        except UserError as exc:
            console.print(f"[red]{text(exc)}")
    unsaved, session_id = controls.unsaved, controls.session_id
    if unsaved:
        console.print(f"[yellow]Session {session_id}: {unsaved} answer{'s were' if unsaved > 1 else ' was'} not "
                      f"saved (see above); every other turn is kept. `rillet chat --session {session_id}` continues "
                      "it.")
        return 1
    console.print(f"[dim]Session {session_id} saved; `rillet chat --session {session_id}` continues it.")
    return 0


class Controls:
    """What a typed line does: send a message, or run one of the commands (app/chat/commands.py)."""

    def __init__(self, engine: ChatEngine, console: Console, session_id: int, options: TurnOptions) -> None:
        self.engine, self.console, self.session_id, self.options = engine, console, session_id, options
        self.unsaved = 0  # answers written but not stored: the closing line must not call the session saved

    def handle(self, typed: Command | str) -> None:
        engine, sid = self.engine, self.session_id
        if isinstance(typed, str):
            self.stream(engine.ask(sid, typed, self.options))
            return
        if typed.name == "help":
            self.console.print(HELP, markup=False, highlight=False)
        elif typed.name == "history":
            for number, message in enumerate(self.questions(), 1):
                self.console.print(f"[dim]{number:>3}.[/dim] {line(message.text)}")
        elif typed.name == "regenerate":
            if self.stream(engine.regenerate(sid, self.options)):
                self.say_answers()
        elif typed.name == "answer":
            place = self.last_place()
            if place is None:
                raise CommandError("The last question has only one answer; /regenerate writes another.")
            view = engine.choose_answer(sid, self.numbered(typed.number, len(place.answers), "answer") - 1,
                                        self.options.model)
            self.console.print(f"[bold]rillet> [/bold]{text(view.messages[-1].text)}")
            self.say_answers()
        elif typed.name == "undo":
            view = engine.undo(sid, self.options.model)
            left = sum(m.role == "user" for m in view.messages)
            self.console.print(f"[dim]Deleted the last turn; {left} question{'s' * (left != 1)} left.")
        elif typed.name == "edit":
            questions = self.questions()
            number = self.numbered(typed.number, len(questions), "question")
            view, ticket = engine.edit(sid, questions[number - 1].ordinal, typed.text, self.options)
            self.switch(view.info, f"question {number}")
            self.stream(ticket)
        elif typed.name == "branch":
            questions = self.questions()
            number = typed.number or 0
            if number > len(questions):
                raise CommandError(f"This session has {len(questions)} turn(s); /branch takes 0 to {len(questions)}.")
            keep = questions[number].ordinal if number < len(questions) else len(engine.messages(sid))
            view = engine.branch(sid, keep, self.options.model)
            self.switch(view.info, f"turn {number}")

    def questions(self) -> list[ChatMessage]:
        return [m for m in self.engine.messages(self.session_id) if m.role == "user"]

    @staticmethod
    def numbered(number: int | None, count: int, what: str) -> int:
        if number is None or not 1 <= number <= count:
            raise CommandError(f"There is no {what} {number}; pick one from 1 to {count}."
                               if count else f"There is no {what} yet.")
        return number

    def last_place(self) -> Variants | None:
        messages = self.engine.messages(self.session_id)
        return self.engine.variants(self.session_id).get(len(messages) - 1) if messages else None

    def say_answers(self) -> None:
        place = self.last_place()
        if place is not None:
            self.console.print(f"[dim](answer {place.chosen + 1} of {len(place.answers)}; /answer N picks another)")

    def switch(self, branch: SessionInfo, where: str) -> None:
        self.console.print(f"[dim]Now in session {branch.id} “{line(branch.title)}”, branched from session "
                           f"{self.session_id} at {where}; session {self.session_id} stays as it was.")
        self.session_id = branch.id

    def stream(self, ticket: Any) -> bool:
        """Print a turn's answer as it comes; True when it was stored. Ctrl-C stops it (what was written is kept)."""
        console = self.console
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
                return True
            elif turn.stage == "failed":
                self.unsaved += 1
                console.print(f"\n[red]{text(shown(turn.error))}")  # the model queue logged a bug's traceback
            elif turn.stage == "cancelled":
                console.print("\n[yellow]Cancelled before it started; nothing was stored.")
        return False
