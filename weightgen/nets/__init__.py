"""The architectures that get generated, built by name from a seed."""
from __future__ import annotations

import torch
from torch import nn

from weightgen.plugins import check_returned
from weightgen.registry import check_kwargs

from . import cnn as _cnn  # noqa: F401  (registers)
from . import field as _field  # noqa: F401  (registers)
from . import mlp as _mlp  # noqa: F401  (registers)
from . import vit as _vit  # noqa: F401  (registers)
from weightgen.adapters import charlm as _charlm  # noqa: F401  (registers char-lm)
from .registry import NETS
from .timm_net import timm_net

TIMM_PREFIX = "timm:"


def build_net(name: str, input_shape, num_classes: int, seed: int = 0, **kwargs) -> nn.Module:
    """Build net ``name`` for inputs of ``input_shape`` and ``num_classes`` outputs.

    ``name`` is a registered net, ``timm:<model>``, an installed package's entry point (group
    ``weightgen.nets``) or a factory by path (``"pkg.mod:make_net"``, ``"./my_nets.py:make_net"``).
    Every factory has the signature ``factory(input_shape, num_classes, **kwargs) -> nn.Module``.
    The same seed gives the same initial weights; the global RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name.startswith(TIMM_PREFIX):
            return timm_net(name[len(TIMM_PREFIX):], tuple(input_shape), num_classes, **kwargs)
        factory = NETS.get(name)
        check_kwargs(factory, kwargs, f"net '{name}'", skip=("input_shape", "num_classes"))
        return check_returned(factory(tuple(input_shape), num_classes, **kwargs), nn.Module, f"net '{name}'",
                              "torch.nn.Module")


def parameter_names(model: nn.Module) -> list[str]:
    """Names of trainable parameters (as opposed to buffers) in state_dict order."""
    return [n for n, _ in model.named_parameters()]


__all__ = ["NETS", "build_net", "parameter_names", "TIMM_PREFIX"]
