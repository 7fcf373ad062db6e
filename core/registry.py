"""Name -> value registries whose lookup error names the kind and lists the valid names."""

from __future__ import annotations

from typing import TypeVar

V = TypeVar("V")


class UnknownName(KeyError, ValueError):
    """A registry lookup of a name it does not hold; the message lists the valid names.

    A KeyError (a failed lookup) and a ValueError (a bad setting), so callers validating a
    configuration catch it either way."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(dict[str, V]):
    """A dict of named choices (strategies, losses, layouts, ...).

    `registry["nope"]` raises `UnknownName`: "unknown strategy 'nope'; choose one
    of: coreset, de, ds".
    """

    def __init__(self, kind: str, /, **entries: V) -> None:
        super().__init__(**entries)
        self.kind = kind

    def __missing__(self, name: str) -> V:
        raise UnknownName(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self))}")
