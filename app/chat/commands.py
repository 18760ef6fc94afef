"""The slash commands of `rillet chat`: what a typed line asks for, parsed in one place.

Questions are numbered from 1 in the order asked, as /history lists them; a line that starts with `//`
is a message that starts with `/`.
"""

from __future__ import annotations

from dataclasses import dataclass

from backbone.errors import InvalidRequest

HELP = """Commands:
  /regenerate        answer the last question again (the old answer is kept: /answer N picks one)
  /answer N          make answer N of the last question the one the conversation goes on from
  /edit N text       ask `text` instead of question N, in a new branch (this session stays as it is)
  /branch N          continue in a new branch holding the first N turns (0: none)
  /undo              delete the last turn (question and answer)
  /history           the questions, numbered
  /help              this list
Start a message with // to send one that begins with /. An empty line quits."""


class CommandError(InvalidRequest):
    """A command typed wrong; the message says how to type it."""


@dataclass(frozen=True)
class Command:
    name: str  # regenerate, answer, edit, branch, undo, history, help
    number: int | None = None
    text: str = ""


_USAGE = {"regenerate": "/regenerate", "answer": "/answer N", "edit": "/edit N text", "branch": "/branch N",
          "undo": "/undo", "history": "/history", "help": "/help"}


def parse(line: str) -> Command | str:
    """The command a line asks for, or the message to send (a `//` line loses its first slash)."""
    if not line.startswith("/"):
        return line
    if line.startswith("//"):
        return line[1:]
    word, _, rest = line[1:].partition(" ")
    name = word.lower()
    if name not in _USAGE:
        raise CommandError(f"Unknown command /{word}; /help lists the commands (start a message with // to send "
                           "one that begins with /).")
    if name in ("regenerate", "undo", "history", "help"):
        if rest.strip():
            raise CommandError(f"{_USAGE[name]} takes nothing after it.")
        return Command(name)
    number_text, _, text = rest.strip().partition(" ")
    if not number_text.isdigit():
        raise CommandError(f"Type {_USAGE[name]}, with N a number (/history lists the questions).")
    number, text = int(number_text), text.strip()
    if name == "edit" and not text:
        raise CommandError("Type /edit N and then the new question, on the same line.")
    if name != "edit" and text:
        raise CommandError(f"{_USAGE[name]} takes only a number.")
    return Command(name, number, text)
