"""A compressed checkpoint on disk: safetensors holding, per tensor, its mask as bits (``numpy.packbits``),
the kept values only, and for a quantized tensor its integer codes packed ``bits`` to a value plus one
float32 scale per output channel; every other tensor as it is. ``read_compact`` gives back the dense
state_dict exactly (the zoo's shard holds the same network dense, for everything that reads zoos)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .quantize import dequantize, pack, quantize, unpack

COMPACT_KEY = "weightgen_compact"


def pack_mask(mask: Tensor) -> Tensor:
    return torch.from_numpy(np.packbits(mask.reshape(-1).numpy().astype(np.uint8)))


def unpack_mask(data: Tensor, shape: tuple[int, ...]) -> Tensor:
    n = math.prod(shape)
    return torch.from_numpy(np.unpackbits(data.numpy())[:n].astype(bool)).reshape(shape)


def compact_tensors(state: dict[str, Tensor], masks: dict[str, Tensor], bits: int | None,
                    quantized: list[str]) -> tuple[dict[str, Tensor], dict]:
    """The tensors and the layout record of ``state``'s compact form (``masks``: kept entries of the
    pruned tensors; ``quantized``: the names held as ``bits``-bit codes)."""
    out, layout = {}, {}
    for name, t in state.items():
        t = t.detach().cpu()
        mask = masks.get(name)
        q = bits if name in quantized else None
        layout[name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "bits": q,
                        "pruned": mask is not None}
        if mask is None and q is None:
            out[name] = t.contiguous()
            continue
        keep = mask.reshape(-1) if mask is not None else torch.ones(t.numel(), dtype=torch.bool)
        if mask is not None:
            out[f"{name}.mask"] = pack_mask(mask)
        if q is None:
            out[f"{name}.values"] = t.reshape(-1)[keep].contiguous()
        else:
            codes, scale = quantize(t, q)
            out[f"{name}.codes"] = pack(codes.reshape(-1)[keep], q)
            out[f"{name}.scale"] = scale
        layout[name]["kept"] = int(keep.sum())
    return out, layout


def write_compact(path: str | Path, state: dict[str, Tensor], masks: dict[str, Tensor], bits: int | None,
                  quantized: list[str]) -> int:
    """Write the compact form of ``state`` to ``path`` (a temporary name, then renamed); returns its bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, layout = compact_tensors(state, masks, bits, quantized)
    tmp = path.with_name(f".{path.name}.partial")
    save_file(tensors, str(tmp), metadata={COMPACT_KEY: json.dumps(layout)})
    os.replace(tmp, path)
    return path.stat().st_size


def _layout(f, path) -> dict:
    meta = f.metadata() or {}
    if COMPACT_KEY not in meta:
        raise ValueError(f"{path}: not a compact checkpoint (no '{COMPACT_KEY}' metadata)")
    return json.loads(meta[COMPACT_KEY])


def read_masks(path: str | Path) -> dict[str, Tensor]:
    """The masks of a compact checkpoint's pruned tensors, by name."""
    with safe_open(str(path), "pt") as f:
        layout = _layout(f, path)
        return {n: unpack_mask(f.get_tensor(f"{n}.mask"), tuple(e["shape"])) for n, e in layout.items() if e["pruned"]}


def read_compact(path: str | Path) -> dict[str, Tensor]:
    """The dense state_dict a compact checkpoint holds."""
    with safe_open(str(path), "pt") as f:
        layout = _layout(f, path)
        state = {}
        for name, e in layout.items():
            shape, dtype = tuple(e["shape"]), getattr(torch, e["dtype"])
            if not e["pruned"] and e["bits"] is None:
                state[name] = f.get_tensor(name)
                continue
            keep = (unpack_mask(f.get_tensor(f"{name}.mask"), shape).reshape(-1) if e["pruned"]
                    else torch.ones(math.prod(shape), dtype=torch.bool))
            if e["bits"] is None:
                kept = f.get_tensor(f"{name}.values")
            else:
                codes = torch.zeros(math.prod(shape), dtype=torch.int8)
                codes[keep] = unpack(f.get_tensor(f"{name}.codes"), e["bits"], int(keep.sum()))
                kept = dequantize(codes.reshape(shape), f.get_tensor(f"{name}.scale"), dtype).reshape(-1)[keep]
            full = torch.zeros(math.prod(shape), dtype=dtype)
            full[keep] = kept.to(dtype)
            state[name] = full.reshape(shape)
        return state
