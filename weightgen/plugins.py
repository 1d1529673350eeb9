"""Factories named by where they live: an import path, a file path or an installed package's entry point.

A config's ``net`` and ``task`` name a factory. Besides a registered name, that name may be

- an import path, ``"my_pkg.models:make_net"``: the module is imported from ``sys.path``;
- a file path, ``"./my_nets.py:make_net"``: the file is loaded as a module of its own, relative to the
  config file's folder (or the current directory), with its folder on ``sys.path`` while it loads, so
  it can import its neighbours;
- the name of an entry point in the group ``weightgen.nets`` or ``weightgen.tasks`` of an installed
  package (``Registry`` looks these up when a name is not registered).

A zoo and a saved generator store the name in its ``canonical`` form (a file path made absolute), so a
later process finds the same factory from any folder without registering anything. Every failure is one
line that names the factory and says what went wrong.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from weightgen.registry import RegistryError, did_you_mean

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_FILE_MODULES: dict[Path, Any] = {}  # resolved path -> the module loaded from it, so a file runs once per process


class PluginError(RegistryError):
    """A factory named by import path, file path or entry point that cannot be loaded or gives the wrong thing."""


def is_factory_path(name: str) -> bool:
    """Whether ``name`` names a factory by where it lives (``"module:attr"`` or ``"file.py:attr"``)."""
    return ":" in name


def split_factory_path(name: str) -> tuple[str, str]:
    """``(module or file, attribute)`` of ``"where:attr"``; the last colon splits, so ``C:\\x.py:f`` works."""
    where, _, attr = name.rpartition(":")
    return where, attr


def is_file_path(where: str) -> bool:
    """Whether the part before the colon is a Python file rather than a dotted module name."""
    return where.endswith(".py") or "/" in where or "\\" in where or where.startswith(("~", "."))


def canonical(name: str, base: str | Path | None = None) -> str:
    """``name`` as a config stores it: a file path made absolute against ``base`` (default: the current
    directory), so it resolves from any folder; any other name unchanged."""
    if not is_factory_path(name):
        return name
    where, attr = split_factory_path(name)
    if not is_file_path(where):
        return name
    path = Path(where).expanduser()
    if not path.is_absolute():
        path = Path(base or Path.cwd()) / path
    return f"{path.resolve()}:{attr}"


def load_factory(name: str, kind: str, base: str | Path | None = None) -> Callable:
    """The callable that ``"module:attr"`` or ``"file.py:attr"`` names; ``kind`` (net, task) goes into errors."""
    what = f"{kind} '{name}'"
    where, attr = split_factory_path(name)
    if not where or not _DOTTED.fullmatch(attr or ""):
        raise PluginError(f"{what}: an import path is 'package.module:factory' or './file.py:factory'")
    if is_file_path(where):
        path = Path(canonical(name, base).rpartition(":")[0])
        module, label = _load_file(path, what), str(path)
    elif _DOTTED.fullmatch(where):
        module, label = _import_module(where, attr, what), f"module '{where}'"
    else:
        raise PluginError(f"{what}: '{where}' is neither a dotted module name nor a .py file")
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = label if i == 0 else f"'{'.'.join(attr.split('.')[:i])}'"
            close = did_you_mean(part, [n for n in dir(obj) if not n.startswith("_")])
            defined = _defined_callables(obj)
            listed = f"; it defines {', '.join(defined)}" if 0 < len(defined) <= 12 else ""
            raise PluginError(f"{what}: {owner} has no attribute '{part}'{close}{listed}")
        obj = getattr(obj, part)
    return ensure_callable(obj, what)


def ensure_callable(obj: Any, what: str) -> Callable:
    """``obj`` if it can be called as a factory; else one line naming what ``what`` names instead."""
    if not callable(obj):
        raise PluginError(f"{what} names {_a(type(obj).__name__)}, not a factory (a function or class)")
    return obj


def check_returned(obj: Any, expected: type, what: str, expected_name: str) -> Any:
    """``obj`` if it is an ``expected``; else one line naming the factory, what it returned and what was expected."""
    if not isinstance(obj, expected):
        kind = type(obj)
        got = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        raise PluginError(f"{what} returned {_a(got)}, expected {_a(expected_name)}")
    return obj


def entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The entry points of ``group`` that installed packages declare, by name (read now, not cached)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


def load_entry_point(ep: importlib.metadata.EntryPoint, kind: str) -> Callable:
    """The factory an entry point names, with a one-line error naming its package when it does not load."""
    dist = getattr(getattr(ep, "dist", None), "name", None)
    what = f"{kind} '{ep.name}' (entry point '{ep.value}' in group '{ep.group}'{f' of {dist}' if dist else ''})"
    try:
        obj = ep.load()
    except Exception as e:  # an installed package's import can fail in any way
        raise PluginError(f"{what}: cannot be loaded: {_describe(e)}") from None
    return ensure_callable(obj, what)


# -- loading ------------------------------------------------------------------------------------
def _import_module(module: str, attr: str, what: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        hint = ""
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            as_file = module.replace(".", "/") + ".py"
            hint = (f" (install it, put its folder on PYTHONPATH, or name the file: "
                    f"'./{as_file}:{attr}')")
        raise PluginError(f"{what}: cannot import module '{module}': {e}{hint}") from None
    except Exception as e:  # the module's own code failed while it was imported
        raise PluginError(f"{what}: importing module '{module}' failed: {_describe(e)}") from None


def _load_file(path: Path, what: str):
    if path in _FILE_MODULES:
        return _FILE_MODULES[path]
    if not path.is_file():
        raise PluginError(f"{what}: no such file {path}")
    stem = re.sub(r"\W", "_", path.stem)
    modname = f"weightgen_user_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{what}: {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    folder = str(path.parent)
    sys.path.insert(0, folder)  # the file may import the modules beside it
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the file's own code failed
        del sys.modules[modname]
        raise PluginError(f"{what}: loading {path} failed: {_describe(e, path)}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    _FILE_MODULES[path] = module
    return module


def _describe(e: BaseException, path: Path | None = None) -> str:
    """``Type: message (file, line N)`` of an exception raised by a user's code, on one line; the file is
    left out where it is ``path``, the file being loaded."""
    if isinstance(e, SyntaxError) and e.filename:
        filename, line, message = e.filename, e.lineno, e.msg
    else:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "importlib" not in f.filename]
        filename, line = (frames[-1].filename, frames[-1].lineno) if frames else (None, None)
        message = str(e)
    where = ""
    if filename:
        where = f" (line {line})" if path is not None and Path(filename) == path else f" ({filename}, line {line})"
    return f"{type(e).__name__}: {' '.join(message.split())}{where}"


def _a(noun: str) -> str:
    """``noun`` with its indefinite article."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _defined_callables(obj: Any) -> list[str]:
    """The public functions and classes a module defines itself (not those it imports); none for other objects."""
    if not isinstance(obj, type(sys)):
        return []
    return sorted(k for k, v in vars(obj).items()
                  if not k.startswith("_") and callable(v) and getattr(v, "__module__", None) == obj.__name__)
