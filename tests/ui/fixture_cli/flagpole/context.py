"""The context of a running command: which command runs, with which values, and its parent command."""

from __future__ import annotations

_stack: list[Context] = []


class Context:
    """Holds the state of one command invocation. Nested commands get a context whose `parent` is the
    context of the command that called them."""

    def __init__(self, command_name: str, values: dict[str, object], parent: Context | None = None) -> None:
        self.command_name = command_name
        self.values = values
        self.parent = parent
        self.obj: object = None  # anything the program wants to share between its commands

    def __enter__(self) -> Context:
        _stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _stack.pop()


def get_current_context() -> Context:
    """The context of the command that is running now."""
    if not _stack:
        raise RuntimeError("There is no active command context.")
    return _stack[-1]
