"""Parameter generators: one interface (fit, sample, save, load), one registry."""
from . import gpt as _gpt  # noqa: F401  (registers)
from . import pdiff as _pdiff  # noqa: F401  (registers)
from . import rpg as _rpg  # noqa: F401  (registers)
from .base import Generator, GeneratorError, load_generator, set_sampling
from .registry import GENERATORS

__all__ = ["Generator", "GeneratorError", "GENERATORS", "load_generator", "set_sampling"]
