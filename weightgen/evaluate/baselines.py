"""The two trivial generators any weight generator must beat (Zeng et al. 2025):
training checkpoints with Gaussian noise added (p-diff's comparison), and the
average of the training checkpoints; and for zoos of many runs (ours): each run's own average
(the average of all runs' checkpoints leaves every run's basin when the runs are independent,
so on such a zoo it is no bar at all). All touch only the generated tensors
(``names``); everything else (frozen layers, BatchNorm buffers) is copied, exactly as
a generator's output is completed from a reference checkpoint.
"""
from __future__ import annotations

import torch
from torch import Tensor

from weightgen.nets.constraints import constrain

# Absolute Gaussian sigmas added to the generated tensors, as p-diff does (it shows
# 0.001, 0.05 and 0.15); the finer ramp finds the accuracy a generator is compared at.
DEFAULT_SIGMAS = (0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.15)


def _check_names(stacked: dict[str, Tensor], names: list[str]) -> int:
    if not names or len(set(names)) != len(names):
        raise ValueError(f"generated tensor names must be given, each once (got {list(names)[:6]})")
    for n in names:
        if n not in stacked:
            raise ValueError(f"layer '{n}' is not in the training checkpoints (they have {list(stacked)[:4]}...)")
        if not stacked[n].is_floating_point():
            raise ValueError(f"layer '{n}' has dtype {stacked[n].dtype}; only floating-point tensors are generated")
    return stacked[names[0]].shape[0]


def noise_added(train_stacked: dict[str, Tensor], names: list[str], sigma: float, n: int, seed: int) -> dict[str, Tensor]:
    """``n`` models: originals drawn by ``seed``, plus ``sigma * randn`` on the ``names`` tensors.

    Originals are drawn in shuffled rounds (every original once before any twice), so
    each is used as evenly as ``n`` allows. The noise is drawn on the CPU with its own
    generator, so the same seed gives the same models on every device.
    """
    b = _check_names(train_stacked, names)
    if n < 1 or sigma < 0:
        raise ValueError(f"noise_added needs n >= 1 and sigma >= 0 (got n={n}, sigma={sigma})")
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(b, generator=gen) for _ in range(-(-n // b))])[:n]
    out = {k: v[order.to(v.device)] for k, v in train_stacked.items()}  # advanced indexing copies
    if sigma > 0:
        # Drawn in `names` order: a state_dict read from safetensors has no fixed key order.
        for k in names:
            noise = torch.randn(out[k].shape, generator=gen, dtype=torch.float32)
            out[k] = constrain(k, out[k] + (sigma * noise).to(out[k].device, out[k].dtype))
    return out


def weight_average(train_stacked: dict[str, Tensor], names: list[str]) -> dict[str, Tensor]:
    """One model (B=1): the mean of the ``names`` tensors over all originals (accumulated
    in float64), every other entry taken from the first original."""
    _check_names(train_stacked, names)
    chosen = set(names)
    return {k: (v.double().mean(0, keepdim=True).to(v.dtype) if k in chosen else v[:1].clone())
            for k, v in train_stacked.items()}


def run_averages(train_stacked: dict[str, Tensor], names: list[str], runs: list[int]) -> dict[str, Tensor]:
    """One model per run, in run order: the mean of the ``names`` tensors over that run's originals
    (``runs[i]``: the run of original ``i``), accumulated in float64; every other entry taken from
    the run's first original. What a generator that learned only each run's mean would make."""
    b = _check_names(train_stacked, names)
    if len(runs) != b:
        raise ValueError(f"run_averages needs the run of each of the {b} originals (got {len(runs)})")
    run_of = torch.tensor(runs)
    members = [(run_of == r).nonzero().flatten() for r in sorted(set(runs))]
    chosen = set(names)
    out = {}
    for k, v in train_stacked.items():
        rows = [(v[i.to(v.device)].double().mean(0).to(v.dtype) if k in chosen else v[i[0]].clone()) for i in members]
        out[k] = torch.stack(rows)
    return out

