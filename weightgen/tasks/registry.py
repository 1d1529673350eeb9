"""The registry of task factories; ``@TASKS.register(name)`` adds one, and installed packages add theirs
under the entry-point group ``weightgen.tasks``."""
from weightgen.registry import Registry

from .base import Task

TASKS: Registry[Task] = Registry("task", group="weightgen.tasks")
