"""The one line between what the user can fix and what is a bug.

A `UserError` is something the user can fix, and its message says how ("The message is empty; type a
question first."). Front ends show it as it is. Every other exception that reaches a front end is a bug:
it is logged with its traceback and shown as an internal error (`shown`), never as advice.

It lives here, at the bottom of the stack (backbone ← memory ← retrieval ← app ← ui), so that every layer
can raise it. Subclasses also derive from the built-in type that describes them (`ValueError`,
`LookupError`, ...), so code that catches those keeps working.
"""

from __future__ import annotations

import logging


class UserError(Exception):
    """Something the user can fix; the message says how."""


class InvalidRequest(UserError, ValueError):
    """A request that cannot be done as given (a name, a setting, a query); the message says what to change."""


class SetupError(UserError, RuntimeError):
    """Something this installation lacks (a package, a model file); the message says how to install it."""


class StudentUnavailable(UserError, ValueError):
    """The student's trained parameters cannot be used (missing, damaged, made for another teacher)."""


class StudentNotTrained(StudentUnavailable, FileNotFoundError):
    """No trained student parameters at the configured path."""


def report(error: BaseException, logger: logging.Logger, what: str) -> str:
    """For a front end that caught `error` itself: log a bug with its traceback (a `UserError` is not a bug and
    is not logged), and return what to show."""
    if not isinstance(error, UserError):
        logger.error("%s failed", what, exc_info=error)
    return shown(error)


def shown(error: BaseException) -> str:
    """What a front end shows for `error`: a `UserError`'s message as it is; for anything else (a bug, which
    whoever caught it logs with its traceback) a short line pointing to the log."""
    if isinstance(error, UserError):
        return str(error)
    return f"Internal error ({type(error).__name__}), see the log."
