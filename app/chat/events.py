"""What a chat turn reports while it runs, and the one fold over those reports that every front end uses.

A job on the model queue (app/chat/scheduler.py) reports, in this order:

    Waiting(ahead)*   in line; `ahead` jobs go first (repeated when that number changes)
    Started           admitted to the model
    Retrieved         a chat turn's passages and recollections (chat turns only, app/engine.py)
    Piece(text)*      newly generated answer text (may be empty while a character or stop sequence is pending)
    then exactly one final event:
    Finished(result)  the job's return value: a `TurnResult` for a chat turn, an `Answer` for plain generation
    Failed(error)     it raised (`backbone.errors.shown(error)` is what a user may see; the queue logged it)
    Cancelled         cancelled before it started: nothing of it ran

`TurnProgress` folds these into what a front end shows (the text so far, the stage, the result or the
error); `follow(events)` yields it after each event that changes something. The web page, the API,
`rillet chat` and `ChatRillet` all read turns this way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from app.chat.prompt import Recollection, Source


@dataclass(frozen=True)
class Waiting:
    """The job is in line; `ahead` jobs will be admitted before it."""

    ahead: int


@dataclass(frozen=True)
class Started:
    """The job was admitted to the model."""


@dataclass(frozen=True)
class Retrieved:
    """The passages and recollections read into this turn's fork."""

    sources: list[Source]
    recalled: list[Recollection]
    prompt_tokens: int


@dataclass(frozen=True)
class Piece:
    """Newly generated answer text (may be empty while a UTF-8 character or a stop sequence is pending)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The job's generator ended; `result` is its return value."""

    result: Any = None


@dataclass(frozen=True)
class Failed:
    """The job raised `error` (logged by the queue, with its traceback when it is not a `UserError`)."""

    error: BaseException


@dataclass(frozen=True)
class Cancelled:
    """Cancelled before it started: nothing of it ran."""


FINAL = (Finished, Failed, Cancelled)

Stage = Literal["waiting", "started", "reading", "answering", "finished", "failed", "cancelled"]


@dataclass
class TurnProgress:
    """Everything a turn's events have said so far.

    `stage` is where the turn is; `text` the answer so far and `delta` what the latest event added to it;
    `ahead` how many turns were ahead of it when it last waited (kept once it started); `retrieved` its
    passages; `result` (finished), `error` (failed)."""

    stage: Stage = "waiting"
    ahead: int | None = None
    retrieved: Retrieved | None = None
    text: str = ""
    delta: str = ""
    result: Any = None
    error: BaseException | None = None
    events: int = field(default=0, repr=False)

    @property
    def done(self) -> bool:
        return self.stage in ("finished", "failed", "cancelled")

    def add(self, event: Any) -> bool:
        """Fold in one event; False when it changes nothing a front end shows (Started, an empty Piece)."""
        self.events += 1
        self.delta = ""
        match event:
            case Waiting(ahead):
                self.stage, self.ahead = "waiting", ahead
            case Started():
                self.stage = "started"
                return False
            case Retrieved():
                self.stage, self.retrieved = "reading", event
            case Piece(text):
                if not text:
                    return False
                self.stage, self.delta = "answering", text
                self.text += text
            case Finished(result):
                self.stage, self.result = "finished", result
            case Failed(error):
                self.stage, self.error = "failed", error
            case Cancelled():
                self.stage = "cancelled"
            case _:
                raise TypeError(f"not a turn event: {event!r}")
        return True


def follow(events: Iterable[Any]) -> Iterator[TurnProgress]:
    """The progress after each event that changes what a front end shows, through the final event.

    The same object is yielded each time, updated. A caller that must survive an exception while waiting
    for the next event (Ctrl-C in a terminal) iterates the events itself and calls `TurnProgress.add`."""
    progress = TurnProgress()
    for event in events:
        if progress.add(event):
            yield progress
