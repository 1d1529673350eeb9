"""G.pt's transformer over hidden units instead of chunks (``gpt.architecture: units`` and ``graph``, ours).

Published G.pt reads one token per chunk of a layer, each position with its own encoder and head,
and must learn from permutation augmentation that reordering hidden units changes nothing. These
architectures are equivariant to that by construction, as the weight-space networks after G.pt
are (DWSNets, neural functionals, graph metanetworks).

``units``: one token per hidden unit, holding every value the unit indexes (its incoming row, its
bias, its BatchNorm entries, its column of the next layer), of noisy theta' and theta side by side.
The units of one layer share an encoder, a learned layer embedding and an output head, and carry no
position, so permuting the units of the inputs permutes the prediction alike. Values no hidden unit
indexes (the output bias) are chunked into tokens with their own positions, as published. This is
exact for one hidden layer. With several, a weight between two hidden layers sits in a unit token of
each, in the other layer's unit order, so permutation augmentation stays on.

``graph``: such a weight is instead an edge between a unit of each layer (one per pair of units),
not part of either unit token. Before every transformer block each edge is updated from itself and
its two units, and each unit adds the mean of its edges, which keeps the model exactly equivariant
at any depth. ``edge_input: bilinear`` adds the product of a map of each unit, the form of SGD's
update of a weight (input activation times output error). With one hidden layer ``graph`` is ``units``.

Every value is gathered from, and scattered back to, the tokenizer's grid ``(T, W)``, so diffusion,
loss, masks and sampling stay G.pt's. Equivariance needs one normalization per tensor
(``tokenizer.normalize: tensor`` or ``none``). Where it is exact, permutation augmentation would only
show the same example through permuted noise, and is skipped. Evidence: docs/results.md, 'Prompted metrics'.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from weightgen.nets.permute import HiddenGroup, unit_values
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
    group that is generated: parameters only, buffers are not tokens). ``edges`` (``edges=True``,
    ``architecture: graph``): one ``(g_a, g_b, (n_a, n_b, K))`` per weight between two hidden layers,
    whose values are then in no unit token. ``loose``: ``(L, W)`` positions of the values in no unit
    and no edge, -1 on padding. ``counts``: ``(T * W,)`` how many tokens hold each grid position (0 on
    padding), to average a value predicted twice.
    """

    def __init__(self, tokenizer: Tokenizer, groups: list[HiddenGroup], edges: bool = False):
        offsets = value_offsets(tokenizer)
        shapes = {s.name: s.shape for s in tokenizer.segments}
        grid = tokenizer.num_tokens * tokenizer.width
        covered = torch.zeros(grid, dtype=torch.long)

        def positions(name: str) -> torch.Tensor:
            return offsets[name] + torch.arange(math.prod(shapes[name])).view(shapes[name])

        generated = [[a for a in g.axes if not a.buffer and a.name in shapes] for g in groups]
        shared = self._shared(generated) if edges else {}
        self.units: list[torch.Tensor] = []
        unit_of_group: dict[int, int] = {}
        for g, (group, axes) in enumerate(zip(groups, generated)):
            # a unit's block stays together
            parts = [unit_values(positions(a.name)[None], a, group.size)[0] for a in axes if a.name not in shared]
            if parts:
                index = torch.cat(parts, 1)
                unit_of_group[g] = len(self.units)
                self.units.append(index)
                covered.index_add_(0, index.flatten(), torch.ones(index.numel(), dtype=torch.long))
        # ``edges[s]``: (unit group a, unit group b, ``(n_a, n_b, K)`` grid positions of the K values
        # joining unit i of a to unit j of b).
        self.edges: list[tuple[int, int, torch.Tensor]] = []
        for name, ((ga, a), (gb, b)) in shared.items():
            index = positions(name).movedim((a.dim, b.dim), (0, 1))
            index = index.reshape(index.shape[0], index.shape[1], -1)
            self.edges.append((unit_of_group[ga], unit_of_group[gb], index))
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

    @staticmethod
    def _shared(generated: list[list]) -> dict[str, tuple]:
        """Tensors indexed by the units of two groups (a weight between two hidden layers), one unit
        value per entry, whose two groups also own values of their own: ``name -> ((g_a, axis_a),
        (g_b, axis_b))``. Edges hang between unit tokens, so a group with nothing else stays as in ``units``."""
        owners: dict[str, list] = {}
        for g, axes in enumerate(generated):
            for a in axes:
                owners.setdefault(a.name, []).append((g, a))
        shared = {n: tuple(o) for n, o in owners.items() if len(o) == 2 and all(a.block == 1 and a.outer == 1 for _, a in o)}
        own = {g: {a.name for a in axes} - set(shared) for g, axes in enumerate(generated)}
        return {n: o for n, o in shared.items() if all(own[g] for g, _ in o)}


class EdgeBlock(nn.Module):
    """One round of messages between the edges of one weight tensor and its two layers' units:
    each edge is updated from itself and its two units, then each unit adds the mean of its edges
    (a mean, so the result does not depend on the order of the units, nor on how many there are).
    Edges are ``d_edge`` wide, narrower than the units' ``d``, since there are n_a x n_b of them."""

    def __init__(self, d: int, d_edge: int, bilinear: bool = False):
        super().__init__()
        self.edge_norm, self.unit_norm = nn.LayerNorm(d_edge), nn.LayerNorm(d)
        self.from_a, self.from_b = nn.Linear(d, d_edge), nn.Linear(d, d_edge, bias=False)
        # ``edge_input: bilinear``: the product of the two units' projections as well (GPTSpec.edge_input)
        self.pair_a, self.pair_b = (nn.Linear(d, d_edge), nn.Linear(d, d_edge)) if bilinear else (None, None)
        self.mlp = nn.Sequential(nn.Linear(d_edge, 2 * d_edge), nn.GELU(), nn.Linear(2 * d_edge, d_edge))
        self.to_a, self.to_b = nn.Linear(d_edge, d), nn.Linear(d_edge, d)

    def forward(self, e: torch.Tensor, ha: torch.Tensor, hb: torch.Tensor):
        """``e``: ``(B, n_a, n_b, d_edge)``; ``ha``, ``hb``: ``(B, n_a, d)``, ``(B, n_b, d)``. Returns the
        new edges and what to add to each side's units."""
        ha_, hb_ = self.unit_norm(ha), self.unit_norm(hb)
        x = self.edge_norm(e) + self.from_a(ha_)[:, :, None] + self.from_b(hb_)[:, None]
        if self.pair_a is not None:
            x = x + self.pair_a(ha_)[:, :, None] * self.pair_b(hb_)[:, None]
        e = e + self.mlp(x)
        return e, self.to_a(e.mean(2)), self.to_b(e.mean(1))


class UnitGPTNet(nn.Module):
    """The transformer of ``GPTNet`` over unit tokens; ``forward`` returns the heads' output
    ``(B, T, W)`` in the token grid (the caller adds theta as G.pt's residual does)."""

    def __init__(self, index: UnitIndex, d: int, heads: int, layers: int, tokens: int, width: int,
                 bilinear_edges: bool = False):
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
        # ``architecture: graph``: the weights between two hidden layers as edges (module docstring).
        self.edge_pairs = [(a, b) for a, b, _ in index.edges]
        for e, (_, _, idx) in enumerate(index.edges):
            self.register_buffer(f"edge_index_{e}", idx, persistent=False)
        d_edge = max(1, d // 4)
        self.edge_in = nn.ModuleList(nn.Linear(2 * idx.shape[2], d_edge) for _, _, idx in index.edges)
        self.edge_blocks = nn.ModuleList(nn.ModuleList(EdgeBlock(d, d_edge, bilinear_edges) for _ in index.edges)
                                         for _ in range(layers)) if index.edges else None
        self.edge_norm = nn.ModuleList(nn.LayerNorm(d_edge) for _ in index.edges)
        self.edge_out = nn.ModuleList(nn.Linear(d_edge, idx.shape[2]) for _, _, idx in index.edges)
        for head in self.edge_out:  # zero, as the unit heads
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def unit_indices(self) -> list[torch.Tensor]:
        return [getattr(self, f"unit_index_{g}") for g in range(self.groups)]

    def edge_indices(self) -> list[torch.Tensor]:
        return [getattr(self, f"edge_index_{e}") for e in range(len(self.edge_pairs))]

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
        h = torch.cat(seq + [scalars], 1)
        spans = [slice(end - n, end) for n, end in zip(sizes, itertools.accumulate(sizes))]  # each group's tokens in h
        # Each edge: its K values of theta' and theta side by side, as the units' are.
        edges = [self.edge_in[e](flat[:, idx].transpose(-1, -2).flatten(3)) for e, idx in enumerate(self.edge_indices())]
        for i, block in enumerate(self.blocks.layers):  # what nn.TransformerEncoder does, with edge rounds between
            if edges:
                delta = torch.zeros_like(h)
                for e, (a, bb) in enumerate(self.edge_pairs):
                    sa, sb = spans[a], spans[bb]
                    edges[e], da, db = self.edge_blocks[i][e](edges[e], h[:, sa], h[:, sb])
                    delta[:, sa] += da
                    delta[:, sb] += db
                h = h + delta
            h = block(h)
        h = self.blocks.norm(h)
        out = torch.zeros(b, self.tokens * self.width, device=noisy.device, dtype=h.dtype)
        for g, idx in enumerate(self.unit_indices()):
            part = self.unit_out[g](h[:, spans[g]])  # (B, n, F)
            out.index_add_(1, idx.flatten(), part.reshape(b, -1))
        for e, idx in enumerate(self.edge_indices()):
            out.index_add_(1, idx.flatten(), self.edge_out[e](self.edge_norm[e](edges[e])).reshape(b, -1))
        part = torch.einsum("bld,ldo->blo", h[:, spans[-1]], self.loose_out) * self.loose_real
        out.index_add_(1, self.loose_index.flatten(), part.reshape(b, -1))
        return (out / self.counts).view(b, self.tokens, self.width)
