"""Decorators that turn a function into a command: `command`, `option` and `pass_context`."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from flagpole.context import Context, get_current_context
from flagpole.formatting import format_help
from flagpole.options import Option


def pass_context(function: Callable) -> Callable:
    """Marks a command's function as wanting the current `Context`: the decorated function is called
    with the context as its first argument, before the option values."""

    @functools.wraps(function)
    def with_context(*args: object, **kwargs: object) -> object:
        return function(get_current_context(), *args, **kwargs)

    return with_context


def option(name: str, **settings: object) -> Callable:
    """Adds an `Option` to the command (see `Option` for `default`, `type` and `help`)."""

    def attach(function: Callable) -> Callable:
        function.__dict__.setdefault("flagpole_options", []).insert(0, Option(name, **settings))
        return function

    return attach


def command(name: str | None = None) -> Callable:
    """Makes a function a command: calling it parses `sys.argv`, prints the help text for `--help`, and
    calls the function with one keyword argument per option."""

    def build(function: Callable) -> Callable:
        options: list[Option] = getattr(function, "flagpole_options", [])
        command_name = name or function.__name__.replace("_", "-")

        def run(args: list[str] | None = None) -> object:
            args = sys.argv[1:] if args is None else args
            if "--help" in args:
                print(format_help(command_name, function.__doc__ or "", options))
                return None
            values = {o.dest: o.value_from(args) for o in options}
            with Context(command_name, values):
                return function(**values)

        run.options = options
        return run

    return build
