"""The help text of a command: usage line, description and a table of the options."""

from __future__ import annotations

import shutil
import textwrap


class HelpFormatter:
    """Collects help text, wrapping it to the terminal's width."""

    def __init__(self, width: int | None = None) -> None:
        self.width = width or min(shutil.get_terminal_size().columns, 80)
        self.lines: list[str] = []

    def write_usage(self, command_name: str) -> None:
        self.lines.append(f"Usage: {command_name} [OPTIONS]")

    def write_paragraph(self, text: str) -> None:
        self.lines += ["", *textwrap.wrap(" ".join(text.split()), self.width)]

    def write_options(self, rows: list[tuple[str, str]]) -> None:
        """A two-column table: the option's name, then its help wrapped beside it."""
        self.lines += ["", "Options:"]
        first = max((len(name) for name, _ in rows), default=0) + 4
        for name, help_text in rows:
            wrapped = textwrap.wrap(help_text, max(self.width - first, 20)) or [""]
            self.lines.append(f"  {name:<{first - 2}}{wrapped[0]}")
            self.lines += [" " * first + more for more in wrapped[1:]]

    def getvalue(self) -> str:
        return "\n".join(self.lines) + "\n"


def format_help(command_name: str, description: str, options: list) -> str:
    """The whole help text of a command, as `--help` prints it: usage, the function's docstring, then
    each option with its help and default."""
    formatter = HelpFormatter()
    formatter.write_usage(command_name)
    if description.strip():
        formatter.write_paragraph(description)
    rows = [(o.name, f"{o.help} [default: {o.default}]" if o.default is not None else o.help) for o in options]
    rows.append(("--help", "Show this message and exit."))
    formatter.write_options(rows)
    return formatter.getvalue()
