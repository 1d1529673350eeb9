"""Where zoo members get their data. A task is a registry entry returning a ``Task``."""
from __future__ import annotations

from weightgen.registry import check_kwargs

from . import digits as _digits  # noqa: F401  (registers)
from . import mnist1d as _mnist1d  # noqa: F401  (registers)
from .base import Task
from .registry import TASKS
from .subset import TaskCodeError, all_codes, binary_subset, code_bits, code_from_classes, parse_code


def get_task(name: str, code: str | None = None, **kwargs) -> Task:
    """Build a registered task; with ``code`` it becomes that class-subset binary task."""
    factory = TASKS.get(name)
    check_kwargs(factory, kwargs, f"task '{name}'")
    task = factory(**kwargs)
    return binary_subset(task, code) if code is not None else task


__all__ = ["Task", "TASKS", "get_task", "all_codes", "binary_subset", "code_bits", "code_from_classes",
           "parse_code", "TaskCodeError"]
