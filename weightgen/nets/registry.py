"""The registry of net factories; ``@NETS.register(name)`` adds one."""
from torch import nn

from weightgen.registry import Registry

NETS: Registry[nn.Module] = Registry("net")
