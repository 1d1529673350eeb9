"""Mamba's selective scan, chosen per device (ours: ``RPGSpec.mamba_scan``).

mambapy scans in parallel (Blelloch, ``pscan``): log(T) passes over the whole
``(batch, tokens, 2*d_model, d_state)`` tensor, which a GPU runs at once. On a CPU the
plain recurrence h_t = a_t * h_{t-1} + b_t, token by token, does the same arithmetic with
less memory traffic: on 2 cores, 2 Mamba layers forward and backward run 1.4-1.9x faster at
the shapes our generators train with, and a whole fit step, where the U-Net and optimizer also
run, 1.4x for the tiny ViT's generator and 6% for the digits CNN's (``benchmarks/mamba_scan.py``;
not measured on many-core CPUs). mambapy's own sequential mode is no help: it indexes
``deltaA[:, t]``, and the backward of each index writes a zero tensor the size of the whole
sequence, many times slower than its parallel scan.

The result is the same recurrence; the two differ by float rounding only (tested).
"""
from __future__ import annotations

import functools

import torch
from mambapy.mamba import Mamba
from mambapy.pscan import pscan

SCANS = ("auto", "parallel", "sequential")


def sequential_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t over dim 1 of ``(B, T, ...)`` (h_0 = b_0), as ``pscan``.

    ``unbind`` rather than indexing, so the backward stacks per-token gradients instead of
    writing a sequence-sized zero tensor for each token."""
    h = torch.zeros_like(b[:, 0])
    hs = []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
        h = torch.addcmul(b_t, a_t, h)
        hs.append(h)
    return torch.stack(hs, 1)


def selective_scan(x, delta, A, B, C, D, *, scan: str):
    """mambapy's ``MambaBlock.selective_scan`` (same arithmetic, same order) with the scan chosen by
    ``scan``: ``auto`` is parallel on a GPU and sequential elsewhere."""
    deltaA = torch.exp(delta.unsqueeze(-1) * A)  # (B, L, ED, N)
    deltaB = delta.unsqueeze(-1) * B.unsqueeze(2)  # (B, L, ED, N)
    BX = deltaB * (x.unsqueeze(-1))  # (B, L, ED, N)
    parallel = scan == "parallel" or (scan == "auto" and deltaA.is_cuda)
    hs = pscan(deltaA, BX) if parallel else sequential_scan(deltaA, BX)
    y = (hs @ C.unsqueeze(-1)).squeeze(3)  # (B, L, ED, N) @ (B, L, N, 1) -> (B, L, ED)
    return y + D * x


def use_scan(mamba: Mamba, scan: str) -> Mamba:
    """Make every block of ``mamba`` scan with ``scan`` (one of ``SCANS``).

    mambapy has no hook for this: each block's ``selective_scan`` is shadowed by an instance
    attribute, which nothing saves (state_dicts hold tensors only)."""
    if scan not in SCANS:
        raise ValueError(f"mamba_scan must be one of {', '.join(SCANS)}, got {scan!r}")
    mamba.config.pscan = True  # mambapy then calls block.selective_scan, which this replaces
    for layer in mamba.layers:
        layer.mixer.selective_scan = functools.partial(selective_scan, scan=scan)
    return mamba
