"""Networks put into a compressed zoo's space: the shared mask or the zoo's density imposed, and values
snapped to their quantization grid. What a generator's samples and the noise and average baselines
become before they are judged, so that every network judged is as compressed as the zoo's."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .quantize import snap


def keep_largest(t: Tensor, density: float, lead: int) -> Tensor:
    """``t`` with all but its largest-magnitude ``density`` fraction zeroed, per network (the first
    ``lead`` dims are a batch); ties at the threshold are kept."""
    flat = t.reshape(*t.shape[:lead], -1)
    k = max(1, math.ceil(density * flat.shape[-1]))
    if k >= flat.shape[-1]:
        return t
    threshold = flat.abs().topk(k, dim=-1).values[..., -1:]
    return torch.where(flat.abs() >= threshold, flat, torch.zeros_like(flat)).reshape(t.shape)


def project(tensors: dict[str, Tensor], record: dict, mask: str, lead: int,
            kept: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """``tensors`` (each ``(*batch, *shape)`` with ``lead`` batch dims; any subset of a network) in the
    compressed space of a zoo whose ``compress`` record is ``record``. ``mask``: the tokenizer's mask mode;
    ``shared`` zeroes what ``kept`` (flat indices per tensor) leaves out, ``generated`` keeps each pruned
    tensor's largest values at the zoo's density, ``none`` leaves the sparsity as it is. A quantized
    tensor is then snapped to its own per-channel grid."""
    out = dict(tensors)
    for name in record.get("pruned", []):
        if name not in out:
            continue
        t = out[name]
        if mask == "shared" and kept is not None and name in kept:
            flat = t.reshape(*t.shape[:lead], -1)
            m = torch.zeros(flat.shape[-1], dtype=torch.bool, device=t.device)
            m[kept[name].to(t.device)] = True
            out[name] = torch.where(m, flat, torch.zeros_like(flat)).reshape(t.shape)
        elif mask == "generated":
            out[name] = keep_largest(t, record["densities"][name], lead)
    bits = record.get("bits")
    for name in record.get("quantized", []):
        if name in out and bits:
            out[name] = snap(out[name], bits, lead)
    return out
