"""Where zoo members get their data. A task is a factory returning a ``Task``: registered, an installed
package's entry point, or named by import path or file path."""
from __future__ import annotations

from weightgen.plugins import check_returned
from weightgen.registry import check_kwargs

from . import digits as _digits  # noqa: F401  (registers)
from . import functions as _functions  # noqa: F401  (registers)
from . import mnist1d as _mnist1d  # noqa: F401  (registers)
from .base import RegressionTask, Task
from .registry import TASKS
from weightgen.fields import digits as _digit_fields  # noqa: F401  (registers digit-fields)
from weightgen.control import envs as _control  # noqa: F401  (registers cartpole, acrobot, control)
from weightgen.adapters import cipher as _cipher  # noqa: F401  (registers cipher)

from .subset import TaskCodeError, all_codes, binary_subset, code_bits, code_from_classes, parse_code


def get_task(name: str, code: str | None = None, **kwargs) -> Task:
    """Build task ``name``; with ``code`` it becomes that class-subset binary task.

    ``name`` is a registered task, an installed package's entry point (group ``weightgen.tasks``) or a
    factory by path (``"pkg.mod:make_task"``, ``"./my_tasks.py:make_task"``), called as ``factory(**kwargs)``.
    """
    factory = TASKS.get(name)
    check_kwargs(factory, kwargs, f"task '{name}'")
    task = check_returned(factory(**kwargs), Task, f"task '{name}'", "weightgen.tasks.Task")
    return binary_subset(task, code) if code is not None else task


__all__ = ["Task", "RegressionTask", "TASKS", "get_task", "all_codes", "binary_subset", "code_bits", "code_from_classes",
           "parse_code", "TaskCodeError"]
