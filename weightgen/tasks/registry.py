from weightgen.registry import Registry

from .base import Task

TASKS: Registry[Task] = Registry("task")
