"""Per-channel symmetric integer quantization: a tensor becomes integers in [-q, q], q = 2^(b-1) - 1,
times one scale per output channel (its largest magnitude over q), the form int8 and int4 inference
kernels take. ``bits`` 8, 4 or 2 (2 is ternary: {-1, 0, 1} times the scale). A zero stays zero, so a
pruned entry stays pruned. Integers are packed ``bits`` to a byte's bits for storage (``pack``)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from weightgen.config import QUANT_BITS


def check_bits(bits: int) -> int:
    if bits not in QUANT_BITS:
        raise ValueError(f"bits {bits} is not supported; allowed: {', '.join(map(str, QUANT_BITS))} (2 is ternary)")
    return bits


def levels(bits: int) -> int:
    """q: the largest integer magnitude of a ``bits``-bit symmetric code."""
    return 2 ** (check_bits(bits) - 1) - 1


def quantize(t: Tensor, bits: int, lead: int = 0) -> tuple[Tensor, Tensor]:
    """``(codes int8 of t's shape, scales)``: one scale per output channel (dim ``lead`` of ``t``;
    the dims before it are a batch). A channel of zeros gets scale 1."""
    q = levels(bits)
    rows = t.detach().reshape(*t.shape[: lead + 1], -1).double()
    scale = rows.abs().amax(-1) / q
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(rows / scale.unsqueeze(-1)).clamp(-q, q).to(torch.int8)
    return codes.reshape(t.shape), scale.float()


def dequantize(codes: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Values of ``codes`` (``scale``'s dims lead) in ``dtype``."""
    lead = scale.dim()
    rows = codes.reshape(*codes.shape[:lead], -1).double() * scale.double().unsqueeze(-1)
    return rows.reshape(codes.shape).to(dtype)


def snap(t: Tensor, bits: int, lead: int = 0) -> Tensor:
    """``t`` moved onto its own per-channel grid: what a network's quantized form holds, in ``t``'s dtype."""
    return dequantize(*quantize(t, bits, lead), dtype=t.dtype)


def pack(codes: Tensor, bits: int) -> Tensor:
    """Flat uint8 bytes holding each code in ``bits`` bits (offset by q so it is unsigned)."""
    u = (codes.reshape(-1).to(torch.int16) + levels(bits)).to(torch.uint8).numpy()
    planes = np.unpackbits(u[:, None], axis=1)[:, 8 - bits:]
    return torch.from_numpy(np.packbits(planes.reshape(-1)))


def unpack(data: Tensor, bits: int, count: int) -> Tensor:
    """The ``count`` int8 codes ``pack`` stored."""
    planes = np.unpackbits(data.numpy())[: count * bits].reshape(count, bits)
    full = np.concatenate([np.zeros((count, 8 - bits), dtype=np.uint8), planes], axis=1)
    u = np.packbits(full, axis=1).reshape(-1)
    return (torch.from_numpy(u).to(torch.int16) - levels(bits)).to(torch.int8)
