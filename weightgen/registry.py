"""Name -> factory registries with errors that list what is available.

Tasks, nets and generators are all looked up by name from YAML configs; one
small class gives each of them the same behaviour: a typo is answered with the
allowed names and the closest match, and keyword arguments are checked against
the factory's signature before anything is built. Tasks and nets also take a
factory by import path or file path (``"pkg.mod:make_net"``, ``"./my_nets.py:make_net"``)
and the entry points of installed packages (``weightgen.plugins``).
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
    """Factories of one ``kind`` (task, net) by name; ``get`` names the available ones on a miss.

    With an entry-point ``group``, a name not registered here is looked up among the entry points that
    installed packages declare in that group, loaded only on such a miss so that startup stays fast;
    a name with a colon (``"pkg.mod:factory"``, ``"./file.py:factory"``) is imported from where it names.
    """

    def __init__(self, kind: str, group: str | None = None):
        self.kind = kind
        self.group = group
        self._items: dict[str, Callable[..., T]] = {}
        self._loaded: dict[str, Callable[..., T]] = {}  # entry points loaded so far

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise RegistryError(f"{self.kind} '{name}' registered twice")
            self._items[name] = fn
            return fn

        return deco

    def _entry_points(self) -> dict:
        from weightgen.plugins import entry_points

        return entry_points(self.group) if self.group else {}

    def names(self) -> list[str]:
        """Registered names and, with a group, the names of installed packages' entry points."""
        return sorted(set(self._items) | set(self._loaded) | set(self._entry_points()))

    def get(self, name: str, base: str | None = None) -> Callable[..., T]:
        """The factory ``name`` names; ``base`` is the folder a relative file path is read from (default: cwd)."""
        if name in self._items:
            return self._items[name]
        if name in self._loaded:
            return self._loaded[name]
        if self.group:
            from weightgen import plugins

            if plugins.is_factory_path(name):
                return plugins.load_factory(name, self.kind, base)
            ep = self._entry_points().get(name)
            if ep is not None:
                self._loaded[name] = plugins.load_entry_point(ep, self.kind)
                return self._loaded[name]
        hint = ""
        if self.group and (name.endswith(".py") or "/" in name):
            hint = f" (name the factory in the file: '{name}:make_{self.kind}')"
        elif self.group:
            hint = f", or a factory by path ('package.module:make_{self.kind}' or './file.py:make_{self.kind}')"
        names = self.names()
        raise RegistryError(
            f"unknown {self.kind} '{name}'{did_you_mean(name, names)}; available: {', '.join(names)}{hint}"
        )

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self._loaded or name in self._entry_points()
