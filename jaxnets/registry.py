"""A named registry: what the model and data-set catalogs are built on (one entry per name)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class _Named(Protocol):
    name: str


T = TypeVar("T", bound=_Named)


class Registry(Generic[T]):
    """Entries by `entry.name`, in registration order.

    Args:
      kind: what an entry is, for messages ('model', 'data set').
      error: the exception type `get` raises for an unknown name.
    """

    def __init__(self, kind: str, error: type[Exception] = ValueError):
        self._kind, self._error = kind, error
        self._entries: dict[str, T] = {}

    def register(self, entry: T, *, replace: bool = False) -> T:
        """Add `entry` (everything that reads the registry sees it at once).

        Raises:
          ValueError: the name is taken (pass `replace=True` to override it).
        """
        if entry.name in self._entries and not replace:
            raise ValueError(f"{self._kind} {entry.name!r} is already registered; pass replace=True to override it")
        self._entries[entry.name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove a registered name (for tests that register their own); no error when absent."""
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        return tuple(self._entries)

    def entries(self) -> Iterator[T]:
        """Every entry, in registration order (a snapshot)."""
        return iter(list(self._entries.values()))

    def get(self, name: str) -> T:
        """The entry of `name`.

        Raises:
          the registry's error type: unknown name (the message lists the registered ones).
        """
        try:
            return self._entries[name]
        except KeyError:
            raise self._error(f"unknown {self._kind} {name!r}; available: {', '.join(self._entries)}") from None
