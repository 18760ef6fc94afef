"""One thread owns the model; chat turns wait in line and take turns on it.

A job is a generator: each `next()` does a bounded piece of model work (a prefill, one token, a commit)
and returns an event for the job's caller (or None, to just hand the turn on). The worker admits jobs
in arrival order, at most `max_active` at a time, and steps the admitted ones round-robin, so a long
answer does not hold back the first token of the next user. With `max_active=1` it is a plain
first-come-first-served queue.
Jobs that share a key (a chat session) never run at the same time: the later one waits for the
earlier to commit, so it sees the earlier turn.

Nothing is lost: every submitted job ends with exactly one final event (`Finished`, `Failed` or
`Cancelled`), even if it raises, is cancelled while waiting, or the scheduler shuts down. The events are
defined, and folded for front ends, in app/chat/events.py.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from app.chat.events import FINAL, Cancelled, Failed, Finished, Started, Waiting
from backbone.errors import UserError

log = logging.getLogger(__name__)




class Ticket:
    """The caller's handle on a job: iterate it for events, `cancel()` it to stop early."""

    def __init__(self, key: str | None, number: int) -> None:
        self.key, self.number = key, number
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._drained = False

    @property
    def cancelled(self) -> bool:
        """Polled by the job between steps; a running job finishes early (and decides what to keep)."""
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job's final event has been emitted."""
        return self._done.wait(timeout)

    def put(self, event: Any) -> None:
        self._events.put(event)
        if isinstance(event, FINAL):
            self._done.set()

    def __iter__(self) -> Iterator[Any]:
        """Events until and including the final one (nothing more once that has been read)."""
        while not self._drained:
            event = self._events.get()
            if isinstance(event, FINAL):
                self._drained = True
            yield event


JobFactory = Callable[[Ticket], Iterator[Any]]


@dataclass
class _Job:
    ticket: Ticket
    factory: JobFactory
    steps: Iterator[Any] | None = None
    last_ahead: int | None = field(default=None)


class Scheduler:
    """Runs jobs on one worker thread (started on first use)."""

    def __init__(self, max_active: int = 4, name: str = "model") -> None:
        if max_active < 1:
            raise ValueError(f"max_active must be at least 1, got {max_active}.")
        self.max_active = max_active
        self._name = name
        self._pending: deque[_Job] = deque()
        self._active: list[_Job] = []
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._numbers = itertools.count(1)

    def submit(self, factory: JobFactory, key: str | None = None) -> Ticket:
        """Queue a job; `factory(ticket)` is called on the worker thread when the job is admitted."""
        with self._lock:
            if self._closed:
                raise RuntimeError("The model queue is shut down; restart the application.")
            ticket = Ticket(key, next(self._numbers))
            self._pending.append(_Job(ticket, factory))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"{self._name}-worker", daemon=True)
                self._thread.start()
            self._lock.notify()
        return ticket

    def run(self, factory: JobFactory, key: str | None = None) -> Any:
        """Submit and wait: the job's result, or its error raised here."""
        for event in self.submit(factory, key):
            if isinstance(event, Finished):
                return event.result
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Cancelled):
                raise RuntimeError("The job was cancelled before it started.")
        raise AssertionError("unreachable: a ticket always ends with a final event")

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._active)

    def close(self, timeout: float = 10.0) -> None:
        """Stop admitting; jobs still waiting are cancelled, running ones are asked to stop and finish."""
        with self._lock:
            self._closed = True
            for job in self._active:
                job.ticket.cancel()
            self._lock.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # worker side -------------------------------------------------------------------------------

    def _admit(self) -> None:
        """Move pending jobs into the active set (arrival order, one per key), drop cancelled ones."""
        busy_keys = {job.ticket.key for job in self._active if job.ticket.key is not None}
        ahead = 0
        for job in list(self._pending):
            if job.ticket.cancelled or self._closed:
                self._pending.remove(job)
                job.ticket.put(Cancelled())
                continue
            free = job.ticket.key is None or job.ticket.key not in busy_keys
            if free and len(self._active) < self.max_active:
                self._pending.remove(job)
                self._active.append(job)
                if job.ticket.key is not None:
                    busy_keys.add(job.ticket.key)
                continue
            if job.last_ahead != ahead:
                job.last_ahead = ahead
                job.ticket.put(Waiting(ahead))
            ahead += 1

    def _run(self) -> None:
        while True:
            with self._lock:
                self._admit()
                while not self._active:
                    if self._closed:
                        return
                    self._lock.wait()
                    self._admit()
                active = list(self._active)
            for job in active:
                if self._step(job):
                    with self._lock:
                        self._active.remove(job)

    def _step(self, job: _Job) -> bool:
        """Advance one job by one step; True when it has ended."""
        ticket = job.ticket
        try:
            if job.steps is None:
                ticket.put(Started())
                job.steps = job.factory(ticket)
            event = next(job.steps)
            if event is not None:  # a bare `yield` only gives the other jobs their turn
                ticket.put(event)
            return False
        except StopIteration as stop:
            ticket.put(Finished(stop.value))
        except Exception as error:  # a failing job must not take the queue down with it
            if isinstance(error, UserError):  # the caller shows its message; not a bug
                log.info("job %d refused: %s", ticket.number, error)
            else:  # a bug: here is its traceback, whoever shows the failure (`backbone.errors.shown`)
                log.exception("job %d failed", ticket.number)
            ticket.put(Failed(error))
        return True


__all__ = ["FINAL", "Cancelled", "Failed", "Finished", "Scheduler", "Started", "Ticket", "Waiting"]
