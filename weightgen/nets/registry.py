"""The registry of net factories; ``@NETS.register(name)`` adds one, and installed packages add theirs
under the entry-point group ``weightgen.nets``."""
from torch import nn

from weightgen.registry import Registry

NETS: Registry[nn.Module] = Registry("net", group="weightgen.nets")
