"""Errors of the session memory, each phrased so the user knows what to do next."""

from __future__ import annotations

from backbone.errors import UserError


class SessionNotFoundError(UserError, LookupError):
    """No session has this id (deleted, or never created)."""

    def __init__(self, session_id: int) -> None:
        super().__init__(f"Session {session_id} does not exist; it may have been deleted. Pick another from the list.")
        self.session_id = session_id


class SessionConflictError(UserError, RuntimeError):
    """The session changed after the caller loaded it; appending now would build on a state that misses a turn."""

    def __init__(self, session_id: int, expected: int) -> None:
        super().__init__(f"Session {session_id} changed since it was loaded (expected version {expected}); "
                         "reload it and send the message again. Nothing was lost.")
        self.session_id = session_id


class SnapshotError(ValueError):
    """A stored state cannot be trusted (damaged, truncated, checksum wrong, unknown format). The session
    rebuilds its state from the transcript instead, so this never reaches the user."""


class InvalidTranscriptError(UserError, ValueError):
    """A message or an imported file that the memory cannot store as given."""
