"""Values some state_dict entries cannot take, whoever made them.

A generated or noise-perturbed BatchNorm ``running_var`` can come out negative, which no
trained network has and which turns the layer's output into NaN (the square root of a
negative number). Generators and the noise baseline pass every entry they produce
through ``constrain`` so both are judged on valid networks.
"""
from __future__ import annotations

from torch import Tensor


def constrain(name: str, tensor: Tensor) -> Tensor:
    """``tensor`` made valid for the entry ``name`` (unchanged for unconstrained entries)."""
    if name.endswith("running_var") and tensor.is_floating_point():
        return tensor.clamp_min(0.0)
    return tensor
