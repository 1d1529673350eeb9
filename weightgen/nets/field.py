"""Field networks: coordinates ``(N, d)`` in [-1, 1]^d to values ``(N, num_classes)``.

- ``field-mlp`` (the default for fields): random Fourier features of the coordinates, then a ReLU
  MLP. The frequencies come from a fixed ``feature_seed``, not from the net's seed, and are a
  non-persistent buffer: every network of a zoo shares them, none stores them, and a generator never
  has to generate them.
- ``siren``: sine activations with SIREN's initialization (Sitzmann et al. 2020): the first layer
  uniform in ±1/fan_in, the others in ±sqrt(6/fan_in)/w0, so that ``sin(w0 x)`` stays in its range.

Both are a few thousand parameters at their defaults (2,145 and 2,241 for 2D inputs).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .registry import NETS


def _coord_dims(input_shape: tuple[int, ...], what: str) -> int:
    if len(input_shape) != 1 or input_shape[0] < 1:
        raise ValueError(f"{what}: input_shape {tuple(input_shape)} is not coordinates; a field net takes (d,)")
    return int(input_shape[0])


class FourierFieldMLP(nn.Module):
    """``[sin(2 pi x B), cos(2 pi x B)]`` with ``B (d, features)`` drawn N(0, scale^2) from ``feature_seed``,
    then Linear+ReLU per hidden size and a Linear head."""

    def __init__(self, dims: int, out: int, features: int, scale: float, hidden: list[int], feature_seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(feature_seed)
        self.register_buffer("B", torch.randn(dims, features, generator=gen) * scale, persistent=False)
        sizes = [2 * features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], out))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 2 * math.pi * x @ self.B
        return self.mlp(torch.cat([torch.sin(z), torch.cos(z)], dim=-1))


@NETS.register("field-mlp")
def field_mlp(input_shape: tuple[int, ...], num_classes: int = 1, features: int = 16, scale: float = 1.5,
              hidden: list[int] = (32, 32), feature_seed: int = 0) -> nn.Module:
    """``features`` Fourier frequencies of standard deviation ``scale`` (cycles per unit), fixed by
    ``feature_seed``; ``hidden`` ReLU layers. 1.5 cycles per unit resolves a 32 x 32 digit's strokes
    without fitting noise between its pixels."""
    return FourierFieldMLP(_coord_dims(input_shape, "field-mlp"), num_classes, features, scale, list(hidden),
                           feature_seed)


class Sine(nn.Module):
    """``sin(w0 x)``."""

    def __init__(self, w0: float):
        super().__init__()
        self.w0 = w0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)


@NETS.register("siren")
def siren(input_shape: tuple[int, ...], num_classes: int = 1, hidden: list[int] = (32, 32, 32),
          w0: float = 30.0) -> nn.Module:
    """Linear+sine per ``hidden`` size (``w0`` the first layer's frequency factor, as in SIREN), then a
    Linear head."""
    sizes = [_coord_dims(input_shape, "siren"), *hidden]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        bound = 1.0 / a if i == 0 else math.sqrt(6.0 / a) / w0
        with torch.no_grad():
            lin.weight.uniform_(-bound, bound)
        layers += [lin, Sine(w0)]
    head = nn.Linear(sizes[-1], num_classes)
    with torch.no_grad():
        bound = math.sqrt(6.0 / sizes[-1]) / w0
        head.weight.uniform_(-bound, bound)
    layers.append(head)
    return nn.Sequential(*layers)
