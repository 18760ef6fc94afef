"""The model queue: order, fairness, one turn per session at a time, failures and cancellation, nothing lost."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from app.chat.scheduler import Cancelled, Failed, Finished, Scheduler, Started, Ticket, Waiting

# Every job appends (job name, step) to this log from the worker thread, so the tests can read the
# order in which the worker really ran the steps.
Log = list[tuple[str, int]]


def counting_job(name: str, steps: int, log: Log) -> object:
    def factory(ticket: Ticket) -> Iterator[int]:
        for i in range(steps):
            if ticket.cancelled:
                return f"{name} stopped at {i}"
            log.append((name, i))
            yield i
        return f"{name} done"
    return factory


def finals(tickets: list[Ticket]) -> list[object]:
    return [list(t)[-1] for t in tickets]  # a ticket always ends with its one final event


def events_of(ticket: Ticket) -> list[object]:
    return list(ticket)


def test_one_at_a_time_is_first_come_first_served() -> None:
    scheduler, log = Scheduler(max_active=1), []
    gate = threading.Event()

    def blocker(ticket: Ticket) -> Iterator[None]:
        gate.wait(5)
        yield None

    first = scheduler.submit(blocker)
    tickets = [scheduler.submit(counting_job(name, 3, log)) for name in "abc"]
    gate.set()
    events = [events_of(t) for t in tickets]
    assert [e[-1].result for e in events] == ["a done", "b done", "c done"]
    assert [name for name, _ in log] == list("aaabbbccc")
    assert isinstance(finals([first])[0], Finished)
    waits = [e.ahead for e in events[2] if isinstance(e, Waiting)]
    assert waits[0] == 2 and waits == sorted(waits, reverse=True), waits
    scheduler.close()


def test_active_jobs_take_turns_step_by_step() -> None:
    scheduler, log = Scheduler(max_active=3), []
    started, gate = threading.Event(), threading.Event()

    def blocker(ticket: Ticket) -> Iterator[None]:
        started.set()
        gate.wait(5)
        yield None

    scheduler.submit(blocker)
    assert started.wait(5)  # the worker is inside the blocker, so a and b are admitted together
    tickets = [scheduler.submit(counting_job(name, 4, log)) for name in "ab"]
    gate.set()
    finals(tickets)
    names = "".join(name for name, _ in log)
    assert names == "abababab", names
    scheduler.close()


def test_jobs_of_one_session_never_overlap_while_others_pass() -> None:
    scheduler, log = Scheduler(max_active=4), []
    gate = threading.Event()

    def long_turn(ticket: Ticket) -> Iterator[None]:
        while not gate.wait(0.005):  # many short steps, like the tokens of a long answer
            yield None

    scheduler.submit(long_turn, key="s1")
    same = scheduler.submit(counting_job("same", 2, log), key="s1")
    other = scheduler.submit(counting_job("other", 2, log), key="s2")
    assert other.wait(5), "a job of another session must not wait for s1"
    assert not same.done and log == [("other", 0), ("other", 1)]
    gate.set()
    assert finals([same])[0].result == "same done"
    scheduler.close()


def test_a_failing_job_reports_its_error_and_the_queue_goes_on() -> None:
    scheduler, log = Scheduler(max_active=2), []

    def broken(ticket: Ticket) -> Iterator[None]:
        yield None
        raise KeyError("boom")

    bad = scheduler.submit(broken)
    good = scheduler.submit(counting_job("good", 3, log))
    failed, done = finals([bad, good])
    assert isinstance(failed, Failed) and isinstance(failed.error, KeyError)
    assert done.result == "good done"
    with pytest.raises(KeyError):
        scheduler.run(broken)
    scheduler.close()


def test_cancel_before_start_runs_nothing_and_cancel_while_running_stops_early() -> None:
    scheduler, log = Scheduler(max_active=1), []
    release = threading.Event()
    steps_seen = threading.Event()

    def slow(ticket: Ticket) -> Iterator[int]:
        for i in range(1000):
            if ticket.cancelled:
                return i
            steps_seen.set()
            release.wait(0.01)
            yield i
        return 1000

    running = scheduler.submit(slow)
    waiting = scheduler.submit(counting_job("never", 3, log))
    assert steps_seen.wait(5)
    waiting.cancel()
    running.cancel()
    stopped, dropped = finals([running, waiting])
    assert isinstance(stopped, Finished) and stopped.result < 1000
    assert isinstance(dropped, Cancelled) and log == []
    events = list(waiting)  # iterating again after the end yields nothing more
    assert events == []
    scheduler.close()


def test_many_threads_submitting_at_once_lose_nothing() -> None:
    scheduler, log = Scheduler(max_active=3), []
    results: list[object] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        result = scheduler.run(counting_job(f"c{i}", 5, log), key=f"s{i % 4}")
        with lock:
            results.append(result)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted(f"c{i} done" for i in range(24))
    assert len(log) == 24 * 5
    scheduler.close()


def test_every_ticket_starts_then_ends_exactly_once() -> None:
    scheduler, log = Scheduler(max_active=2), []
    tickets = [scheduler.submit(counting_job(str(i), 2, log)) for i in range(5)]
    for ticket in tickets:
        events = list(ticket)
        assert sum(isinstance(e, Started) for e in events) == 1
        assert sum(isinstance(e, Finished | Failed | Cancelled) for e in events) == 1
        assert isinstance(events[-1], Finished)
    scheduler.close()


def test_close_cancels_waiting_jobs_and_refuses_new_ones() -> None:
    scheduler = Scheduler(max_active=1)
    gate = threading.Event()

    def blocker(ticket: Ticket) -> Iterator[None]:
        while not ticket.cancelled:
            gate.wait(0.01)
            yield None

    running = scheduler.submit(blocker)
    waiting = scheduler.submit(blocker)
    while scheduler.running == 0:
        gate.wait(0.01)
    scheduler.close()
    assert isinstance(finals([waiting])[0], Cancelled)
    assert isinstance(finals([running])[0], Finished)
    with pytest.raises(RuntimeError, match="shut down"):
        scheduler.submit(blocker)


def test_max_active_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Scheduler(max_active=0)
