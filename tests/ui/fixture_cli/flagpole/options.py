"""Options: named values given on the command line, such as `--count 3`."""

from __future__ import annotations


class Option:
    """One command-line option.

    :param name: the option as typed, for example ``--count``.
    :param default: the value the option takes when it is not given on the command line. Give it as
        ``option("--count", default=1)``; without a default the option's value is ``None``.
    :param type: converts the text typed into the value (``int``, ``float``, ...); by default the
        type of the default value, else ``str``.
    :param help: one line describing the option, shown by ``--help``.
    """

    def __init__(self, name: str, default: object = None, type: type | None = None, help: str = "") -> None:
        if not name.startswith("--"):
            raise ValueError(f"An option's name starts with '--', not {name!r}.")
        self.name = name
        self.default = default
        self.type = type or (default.__class__ if default is not None else str)
        self.help = help

    @property
    def dest(self) -> str:
        """The keyword argument the command's function receives: ``--max-size`` becomes ``max_size``."""
        return self.name[2:].replace("-", "_")

    def value_from(self, args: list[str]) -> object:
        """The option's value in `args`, converted by its type; its default when it is not there."""
        if self.name in args:
            position = args.index(self.name)
            if position + 1 >= len(args):
                raise ValueError(f"The option {self.name} needs a value.")
            return self.type(args[position + 1])
        return self.default
