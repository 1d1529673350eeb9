"""The registry of task factories; ``@TASKS.register(name)`` adds one."""
from weightgen.registry import Registry

from .base import Task

TASKS: Registry[Task] = Registry("task")
