"""Mamba's selective scan, chosen per device: parallel on a GPU, token by token elsewhere.

mambapy scans in parallel (Blelloch, ``pscan``): log(T) passes over the whole
``(batch, tokens, 2*d_model, d_state)`` tensors ``exp(delta * A)`` and ``delta * B * x``,
which a GPU runs at once. On a CPU those tensors are the cost: every elementwise pass over
one (forward, and again in autograd's backward) runs at memory speed. The sequential scan
here never builds them. It walks the tokens one by one, forms each token's
``(batch, 2*d_model, d_state)`` slice, which stays in cache, and keeps only the states h_t
for the backward. The backward runs the reverse recurrence by hand, as a
``torch.autograd.Function``, rather than recording one autograd node per token, which makes
a CPU fit step faster (docs/results.md, "Speed"). mambapy's own sequential
mode is no help: it indexes ``deltaA[:, t]``, and the backward of each index writes a zero
tensor the size of the whole sequence.

Both compute the same recurrence; they differ by float rounding only (tested).
``benchmarks/mamba_scan.py`` times each by passing ``scan`` to ``use_scan``.
"""
from __future__ import annotations

import functools

import torch
from mambapy.mamba import Mamba
from mambapy.pscan import pscan

SCANS = ("parallel", "sequential")


class SequentialSelectiveScan(torch.autograd.Function):
    """y_t = C_t . h_t with h_t = exp(delta_t A) * h_{t-1} + (delta_t x_t) B_t, token by token.

    Shapes as mambapy's: ``x``, ``delta`` ``(B, L, ED)``, ``A`` ``(ED, N)``, ``B``, ``C``
    ``(B, L, N)`` -> ``y`` ``(B, L, ED)`` (without the ``D * x`` skip). Time-major copies
    make each token's slices contiguous."""

    @staticmethod
    def forward(ctx, x, delta, A, B, C):
        xs, ds = x.transpose(0, 1).contiguous(), delta.transpose(0, 1).contiguous()  # (L, B, ED)
        bs, cs = B.transpose(0, 1).contiguous(), C.transpose(0, 1).contiguous()      # (L, B, N)
        length, batch, ed = xs.shape
        # every state, for the backward; without one (sampling) only the current state is held
        hs = x.new_empty(length, batch, ed, A.shape[1]) if any(ctx.needs_input_grad) else None
        y = x.new_empty(length, batch, ed, 1)
        h = x.new_zeros(batch, ed, A.shape[1])
        for t in range(length):
            decay = torch.exp(ds[t, :, :, None] * A)
            drive = (ds[t] * xs[t])[:, :, None] * bs[t][:, None, :]
            h = torch.addcmul(drive, decay, h, **({} if hs is None else {"out": hs[t]}))
            torch.bmm(h, cs[t][:, :, None], out=y[t])
        if hs is not None:
            ctx.save_for_backward(xs, ds, A, bs, cs, hs)
        return y[..., 0].transpose(0, 1)

    @staticmethod
    def backward(ctx, dy):
        xs, ds, A, bs, cs, hs = ctx.saved_tensors
        dys = dy.transpose(0, 1)
        dx, ddelta, dB, dC = (torch.empty_like(v) for v in (xs, ds, bs, cs))
        grad_h = torch.zeros_like(hs[0])  # dL/dh_t, carried back from token t+1
        grad_a = torch.zeros_like(hs[0])  # sum over tokens of dL/d(delta_t A) * delta_t, per batch row
        for t in range(len(xs) - 1, -1, -1):
            d_t, x_t, dy_t = ds[t], xs[t], dys[t]
            torch.bmm(dy_t[:, None, :], hs[t], out=dC[t][:, None, :])
            grad_h.addcmul_(dy_t[:, :, None], cs[t][:, None, :])
            grad_dx = torch.bmm(grad_h, bs[t][:, :, None])[..., 0]  # dL/d(delta_t x_t)
            torch.bmm((d_t * x_t)[:, None, :], grad_h, out=dB[t][:, None, :])
            torch.mul(grad_dx, d_t, out=dx[t])
            torch.mul(grad_dx, x_t, out=ddelta[t])
            grad_h.mul_(torch.exp(d_t[:, :, None] * A))  # dL/dh_t * decay_t: h_{t-1}'s share, and ...
            if t:  # ... times h_{t-1}, dL/d(delta_t A) (h_{-1} = 0)
                grad_z = grad_h * hs[t - 1]
                ddelta[t].add_((grad_z * A).sum(-1))
                grad_a.addcmul_(grad_z, d_t[:, :, None])
        return (dx.transpose(0, 1), ddelta.transpose(0, 1), grad_a.sum(0),
                dB.transpose(0, 1), dC.transpose(0, 1))


def selective_scan(x, delta, A, B, C, D, *, scan: str | None = None):
    """mambapy's ``MambaBlock.selective_scan`` with the scan chosen by ``scan`` (one of ``SCANS``);
    None: parallel on a GPU, sequential elsewhere."""
    if (scan or ("parallel" if x.is_cuda else "sequential")) == "sequential":
        return SequentialSelectiveScan.apply(x, delta, A, B, C) + D * x
    deltaA = torch.exp(delta.unsqueeze(-1) * A)  # (B, L, ED, N)
    deltaB = delta.unsqueeze(-1) * B.unsqueeze(2)  # (B, L, ED, N)
    BX = deltaB * (x.unsqueeze(-1))  # (B, L, ED, N)
    hs = pscan(deltaA, BX)
    y = (hs @ C.unsqueeze(-1)).squeeze(3)  # (B, L, ED, N) @ (B, L, N, 1) -> (B, L, ED)
    return y + D * x


def use_scan(mamba: Mamba, scan: str | None = None) -> Mamba:
    """Make every block of ``mamba`` scan with ``scan`` (one of ``SCANS``; None: by device, as
    ``selective_scan``).

    mambapy has no hook for this: each block's ``selective_scan`` is shadowed by an instance
    attribute, which nothing saves (state_dicts hold tensors only)."""
    if scan is not None and scan not in SCANS:
        raise ValueError(f"scan must be one of {', '.join(SCANS)} (or None: by device), got {scan!r}")
    mamba.config.pscan = True  # mambapy then calls block.selective_scan, which this replaces
    for layer in mamba.layers:
        layer.mixer.selective_scan = functools.partial(selective_scan, scan=scan)
    return mamba
