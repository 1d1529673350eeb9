"""Name -> factory registries with errors that list what is available.

Tasks, nets and generators are all looked up by name from YAML configs; one
small class gives each of them the same behaviour: a typo is answered with the
allowed names and the closest match, and keyword arguments are checked against
the factory's signature before anything is built.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """An unknown name or a bad keyword argument for a registered factory."""


def did_you_mean(word: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing when none is close."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_kwargs(fn: Callable, kwargs: dict[str, Any], what: str, skip: tuple[str, ...] = ()) -> None:
    """Raise a RegistryError naming any keyword that ``fn`` does not accept."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if n not in skip and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in kwargs:
        if key not in allowed:
            raise RegistryError(
                f"{what}: unknown option '{key}'{did_you_mean(key, allowed)}; allowed: {', '.join(allowed) or 'none'}"
            )


class Registry(Generic[T]):
    """Factories of one ``kind`` (task, net) by name; ``get`` names the available ones on a miss."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise RegistryError(f"{self.kind} '{name}' registered twice")
            self._items[name] = fn
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            raise RegistryError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; available: {', '.join(self.names())}"
            )
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items
