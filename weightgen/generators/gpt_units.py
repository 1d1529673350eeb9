"""G.pt's transformer over hidden units instead of per-layer chunks (``gpt.architecture: units``, ours).

G.pt as published reads one token per chunk of a layer, each position with its own encoder
and head, and learns that a permutation of hidden units changes nothing from permutation
augmentation: every pair in a fresh order. On the digits trajectory zoo that model did not
fit even its own training pairs from an initialization with augmentation on, and without it
learned the 180 training runs but not new initializations (docs/results.md).

This architecture is equivariant to those permutations by construction, as in the
weight-space networks that followed G.pt (DWSNets, neural functionals, graph metanetworks):
one token per hidden unit, holding every value that unit indexes (its incoming row, its bias,
its BatchNorm entries, its column of the next layer), of theta' (noisy) and theta side by side.
The units of one layer share an encoder, a learned layer embedding and an output head, and
carry no position, so the transformer treats them as a set: permuting the units of theta and
the noisy theta' permutes the prediction the same way. Values no hidden unit indexes (the
output layer's bias) are chunked into tokens of the tokenizer's width with their own
positions and encoders, as in the published model.

Exact for a net with one hidden layer (the digits MLP [32] of the trajectory benchmark). With
several, a weight between two hidden layers sits in a unit token of each (its prediction is the
mean of the two), and inside a token its values are in the order of the *other* layer's units:
the model is then not equivariant to that layer's permutations, and permutation augmentation
(if configured) stays on. A graph metanetwork's message passing would remove that; not built.

Every value is gathered from, and scattered back to, the shared tokenizer's token grid
``(T, W)``, so diffusion, loss, masks and sampling stay those of G.pt. The equivariance needs
one normalization per tensor (``tokenizer.normalize: tensor`` or ``none``): per-element
statistics differ between units. Where it is exact, permutation augmentation is redundant (a
permuted pair is the same training example seen through permuted noise) and is not applied.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from weightgen.nets.permute import HiddenGroup
from weightgen.tokens import Tokenizer


def value_offsets(tokenizer: Tokenizer) -> dict[str, int]:
    """Where each generated tensor's first value lies in the flattened token grid ``T * W``."""
    width = tokenizer.width
    offsets, running = {}, 0
    for s in tokenizer.segments:
        offsets[s.name] = running if tokenizer.flat else s.first * width
        running += s.numel
    return offsets


class UnitIndex:
    """Index maps between the flat token grid and unit tokens.

    ``units[g]``: ``(size_g, F_g)`` grid positions of unit u's values in group g (every axis of the
    group that is generated: parameters only, buffers are not tokens). ``loose``: ``(L, W)``
    positions of the values in no unit, -1 on padding. ``counts``: ``(T * W,)`` how many tokens
    hold each grid position (0 on padding), to average a value predicted twice.
    """

    def __init__(self, tokenizer: Tokenizer, groups: list[HiddenGroup]):
        offsets = value_offsets(tokenizer)
        shapes = {s.name: s.shape for s in tokenizer.segments}
        grid = tokenizer.num_tokens * tokenizer.width
        covered = torch.zeros(grid, dtype=torch.long)
        self.units: list[torch.Tensor] = []
        for group in groups:
            parts = []
            for axis in group.axes:
                if axis.buffer or axis.name not in shapes:
                    continue
                shape = shapes[axis.name]
                pos = offsets[axis.name] + torch.arange(math.prod(shape)).view(shape)
                parts.append(pos.movedim(axis.dim, 0).reshape(group.size, -1))  # a unit's block stays together
            if parts:
                index = torch.cat(parts, 1)
                self.units.append(index)
                covered.index_add_(0, index.flatten(), torch.ones(index.numel(), dtype=torch.long))
        real = tokenizer.mask.flatten()
        rest = torch.nonzero(real & (covered == 0)).flatten()
        width = tokenizer.width
        pad = (-len(rest)) % width
        self.loose = torch.cat([rest, torch.full((pad,), -1)]).view(-1, width) if len(rest) else rest.view(0, width)
        loose_count = torch.zeros(grid, dtype=torch.long)
        loose_count[rest] = 1
        self.counts = covered + loose_count
        # Exactly equivariant only when no value sits in two units' tokens: a weight between two
        # hidden layers lies, inside each layer's unit token, in the order of the other layer's units.
        self.exact = bool((covered <= 1).all())


class UnitGPTNet(nn.Module):
    """The transformer of ``GPTNet`` over unit tokens; ``forward`` returns the heads' output
    ``(B, T, W)`` in the token grid (the caller adds theta as G.pt's residual does)."""

    def __init__(self, index: UnitIndex, d: int, heads: int, layers: int, tokens: int, width: int):
        super().__init__()
        self.tokens, self.width = tokens, width
        self.register_buffer("counts", index.counts.clamp_min(1).float(), persistent=False)
        for g, idx in enumerate(index.units):
            self.register_buffer(f"unit_index_{g}", idx, persistent=False)
        self.register_buffer("loose_index", index.loose.clamp_min(0), persistent=False)
        self.register_buffer("loose_real", (index.loose >= 0).float(), persistent=False)
        self.groups = len(index.units)
        # Theta' (noisy) and theta of one unit side by side: the update is read unit by unit.
        self.unit_in = nn.ModuleList(nn.Linear(2 * idx.shape[1], d) for idx in index.units)
        self.unit_layer = nn.Parameter(0.02 * torch.randn(self.groups, d))  # which layer, not which unit
        self.unit_out = nn.ModuleList(nn.Linear(d, idx.shape[1]) for idx in index.units)
        loose = len(index.loose)
        self.loose_in = nn.Parameter(torch.empty(loose, 2 * width, d).uniform_(-1, 1) / math.sqrt(2 * width))
        self.loose_pos = nn.Parameter(0.02 * torch.randn(loose, d))
        self.loose_out = nn.Parameter(torch.zeros(loose, d, width))
        for head in self.unit_out:  # zero: the model starts as "no update"
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)

    def unit_indices(self) -> list[torch.Tensor]:
        return [getattr(self, f"unit_index_{g}") for g in range(self.groups)]

    def forward(self, noisy: torch.Tensor, start: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        """``noisy``, ``start``: ``(B, T, W)``; ``scalars``: ``(B, S, d)`` embedded metrics and
        timestep, appended to the sequence (order-free: each has its own embedding)."""
        b = noisy.shape[0]
        flat = torch.stack([noisy.reshape(b, -1), start.reshape(b, -1)], -1)  # (B, T*W, 2)
        seq, sizes = [], []
        for g, idx in enumerate(self.unit_indices()):
            values = flat[:, idx]  # (B, n, F, 2)
            seq.append(self.unit_in[g](values.transpose(-1, -2).flatten(2)) + self.unit_layer[g])
            sizes.append(idx.shape[0])
        loose = flat[:, self.loose_index] * self.loose_real[..., None]  # (B, L, W, 2)
        loose = loose.transpose(-1, -2).flatten(2)
        seq.append(torch.einsum("bli,lio->blo", loose, self.loose_in) + self.loose_pos)
        sizes.append(len(self.loose_index))
        h = self.blocks(torch.cat(seq + [scalars], 1))
        out = torch.zeros(b, self.tokens * self.width, device=noisy.device, dtype=h.dtype)
        first = 0
        for g, idx in enumerate(self.unit_indices()):
            part = self.unit_out[g](h[:, first: first + sizes[g]])  # (B, n, F)
            out.index_add_(1, idx.flatten(), part.reshape(b, -1))
            first += sizes[g]
        part = torch.einsum("bld,ldo->blo", h[:, first: first + sizes[-1]], self.loose_out) * self.loose_real
        out.index_add_(1, self.loose_index.flatten(), part.reshape(b, -1))
        return (out / self.counts).view(b, self.tokens, self.width)
