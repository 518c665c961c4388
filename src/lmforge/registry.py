"""A tiny name -> object registry.

Each registry lives beside what it registers (``NORMS`` in the norms module, ``MODELS`` in ``models``...).
Configs hold names (``Literal`` strings); code resolves them here. An unknown name raises an error that lists
the valid choices.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from lmforge.errors import ConfigError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps names to objects (usually classes or builder functions).

    Example:
        >>> NORMS = Registry("norm")
        >>> @NORMS.register("rmsnorm")
        ... class RMSNorm: ...
        >>> NORMS.get("rmsnorm").__name__
        'RMSNorm'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a name can be registered once."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> T:
        """Registers ``obj`` under ``name`` (the non-decorator form)."""
        return self.register(name)(obj)

    def get(self, name: str) -> T:
        """Returns the object registered as ``name``; an unknown name lists the choices."""
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(sorted(self._items)) or "(none registered)"
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
