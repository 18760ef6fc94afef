"""flagpole: command-line programs from decorated functions."""

from flagpole.context import Context, get_current_context
from flagpole.decorators import command, option, pass_context
from flagpole.options import Option

__all__ = ["Context", "Option", "command", "get_current_context", "option", "pass_context"]
