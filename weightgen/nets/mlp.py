"""``mlp``: a multilayer perceptron on flattened inputs (``hidden``, ``activation``)."""
from __future__ import annotations

import math

from torch import nn

from .registry import NETS

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


@NETS.register("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: list[int] = (32,), activation: str = "relu") -> nn.Module:
    """Flatten, then Linear+activation for each hidden size, then a Linear head."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"mlp: unknown activation '{activation}'; allowed: {', '.join(ACTIVATIONS)}")
    sizes = [math.prod(input_shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], num_classes))
    return nn.Sequential(*layers)
