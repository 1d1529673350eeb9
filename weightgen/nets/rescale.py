"""Rescaling hidden units of ReLU nets, which leaves a network's function unchanged (G.pt's
``scale_augmentation``, ours).

ReLU is positively homogeneous, relu(s z) = s relu(z) for s > 0, and so are average pooling and
the identity. Multiplying everything that computes a hidden unit (its rows of the layer's weight
and its bias, ``Axis.dim == 0`` in a ``weightgen.nets.permute.HiddenGroup``) by s and everything
that reads it (its columns of the next layer's weight, ``dim == 1``) by 1 / s gives another point
in weight space with exactly the same outputs. Where permutations are finitely many, these form a
continuum: a pair of checkpoints rescaled by the same factors is a new pair with the same metrics.

Only nets whose every hidden unit feeds a positively homogeneous map qualify: the library's ``mlp``
with ``relu`` and its ``cnn`` without BatchNorm (a BatchNorm would undo the scale of its input, and a
ViT's LayerNorm, attention and GELU are not homogeneous). Others are refused by name.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .permute import HiddenGroup, _by_unit, _from_units, hidden_groups


class RescaleError(ValueError):
    """A net whose hidden units cannot be rescaled without changing its function."""


def rescalable_groups(net: str, shapes: dict[str, tuple[int, ...]], kwargs: dict | None = None) -> list[HiddenGroup]:
    """The hidden layers of net ``net`` whose units can be rescaled, or a ``RescaleError`` that says why not."""
    kwargs = dict(kwargs or {})
    if net == "mlp" and kwargs.get("activation", "relu") != "relu":
        raise RescaleError(f"scale augmentation needs a positively homogeneous activation: mlp has activation "
                           f"{kwargs['activation']!r}, only 'relu' keeps the function (set scale_augmentation: null)")
    if net not in ("mlp", "cnn"):
        raise RescaleError(f"scale augmentation knows the ReLU nets mlp and cnn (without BatchNorm), not net '{net}' "
                           "(set scale_augmentation: null)")
    if net == "cnn" and kwargs.get("batchnorm"):
        raise RescaleError("scale augmentation: a cnn with BatchNorm normalizes away the scale of its convs' outputs, "
                           "so rescaled units would change its function; build it with batchnorm: false or set "
                           "scale_augmentation: null")
    return hidden_groups(net, shapes, kwargs)


def random_scales(groups: list[HiddenGroup], n: int, max_factor: float,
                  generator: torch.Generator | None = None) -> list[Tensor]:
    """One ``(n, size)`` tensor per group: a factor per unit and network, log-uniform in [1 / max_factor, max_factor]."""
    if max_factor < 1:
        raise ValueError(f"max_factor must be at least 1, got {max_factor}")
    bound = math.log(max_factor)
    return [torch.exp((2 * torch.rand(n, g.size, generator=generator) - 1) * bound) for g in groups]


def rescale_batch(states: dict[str, Tensor], groups: list[HiddenGroup], scales: list[Tensor]) -> dict[str, Tensor]:
    """Stacked state_dicts ``name -> (B, *shape)`` with row b's unit u of group g computed ``scales[g][b, u]``
    times larger and read as many times more weakly. Entries in no group, or that ``states`` lacks, are left as they are."""
    out = dict(states)
    for group, scale in zip(groups, scales):
        for axis in group.axes:
            if axis.name not in out:
                continue
            units, moved = _by_unit(out[axis.name], axis, group.size)
            factor = (scale if axis.dim == 0 else 1 / scale).to(units)
            out[axis.name] = _from_units(units * factor[:, :, None, None], axis, moved)
    return out
