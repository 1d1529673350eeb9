"""Permutations of hidden units that leave a network's function unchanged (G.pt's augmentation).

Reordering the units of a hidden layer, and in the same way every entry that is indexed
by those units (the layer's output rows and bias, a BatchNorm's weight, bias and running
statistics, the next layer's input columns), gives another point in weight space that
computes exactly the same function. G.pt trains on such permuted copies, the same
permutation applied to both checkpoints of a pair, so that the generator learns updates
that do not depend on one arbitrary ordering of the units.

A ``HiddenGroup`` lists the axes one hidden layer's permutation moves. When a layer is
flattened into a linear one (channels x positions), one unit is a contiguous ``block`` of
input columns: permuting a channel moves its block of spatial positions with it. An axis
that stacks several tensors' units (attention's fused query, key and value rows) is split
into ``outer`` equal parts, the same permutation applied inside each.
``hidden_groups`` holds the hand-written groups of the library's ``mlp``, ``cnn`` and ``vit``;
``weightgen.nets.symmetry`` finds those of any other net (declared by the net, or traced).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from inspect import signature

import torch
from torch import Tensor

from .vit import vit


class PermutationError(ValueError):
    """A net whose hidden units this module cannot permute."""


@dataclass(frozen=True)
class Axis:
    """Dimension ``dim`` of entry ``name`` is indexed by the group's units, ``block`` values per unit."""

    name: str
    dim: int
    block: int = 1
    buffer: bool = False  # running statistics: not trained, but permuted all the same
    outer: int = 1  # the dimension is ``outer`` stacked parts of units x block (attention's q, k, v rows)


@dataclass(frozen=True)
class HiddenGroup:
    """One hidden layer's units and every axis its permutation moves."""

    size: int  # units in the hidden layer
    axes: tuple[Axis, ...]


def _indexed(shapes: dict[str, tuple[int, ...]], pattern: str) -> list[tuple[int, str]]:
    """(index, prefix) of every ``<prefix>.weight`` whose name matches ``pattern`` (one int group), in order."""
    found = []
    for name in shapes:
        m = re.fullmatch(pattern, name)
        if m:
            found.append((int(m.group(1)), name.removesuffix(".weight")))
    return sorted(found)


def _mlp_groups(shapes: dict[str, tuple[int, ...]]) -> list[HiddenGroup]:
    # nn.Sequential(Flatten, Linear, act, Linear, act, ..., Linear): entries "<i>.weight", "<i>.bias".
    linears = [p for _, p in _indexed(shapes, r"(\d+)\.weight")]
    groups = []
    for layer, nxt in zip(linears[:-1], linears[1:]):
        size = shapes[f"{layer}.weight"][0]
        axes = [Axis(f"{layer}.weight", 0), Axis(f"{nxt}.weight", 1)]
        if f"{layer}.bias" in shapes:
            axes.append(Axis(f"{layer}.bias", 0))
        groups.append(HiddenGroup(size, tuple(axes)))
    return groups


def _cnn_groups(shapes: dict[str, tuple[int, ...]]) -> list[HiddenGroup]:
    # features.<i>.0 is a conv, features.<i>.1 an optional BatchNorm2d; then pool, flatten, head.
    convs = [p for _, p in _indexed(shapes, r"features\.(\d+)\.0\.weight")]
    groups = []
    for i, conv in enumerate(convs):
        size = shapes[f"{conv}.weight"][0]
        axes = [Axis(f"{conv}.weight", 0), Axis(f"{conv}.bias", 0)]
        bn = conv.removesuffix(".0") + ".1"
        if f"{bn}.weight" in shapes:
            axes += [Axis(f"{bn}.weight", 0), Axis(f"{bn}.bias", 0),
                     Axis(f"{bn}.running_mean", 0, buffer=True), Axis(f"{bn}.running_var", 0, buffer=True)]
        if i + 1 < len(convs):
            axes.append(Axis(f"{convs[i + 1]}.weight", 1))
        else:
            # The head reads the flattened features channel by channel: each channel is a block
            # of in_features / channels columns (1 after the global average pool).
            in_features = shapes["head.weight"][1]
            if in_features % size:
                raise PermutationError(f"cnn: head.weight has {in_features} inputs, not a multiple of the "
                                       f"{size} channels of {conv}")
            axes.append(Axis("head.weight", 1, in_features // size))
        groups.append(HiddenGroup(size, tuple(a for a in axes if a.name in shapes)))
    return groups


def _vit_groups(shapes: dict[str, tuple[int, ...]], heads: int) -> list[HiddenGroup]:
    # weightgen.nets.vit: three kinds of symmetry, each exact for the network's function.
    # 1. The residual stream's channels: every tensor that writes to or reads from it, LayerNorms
    #    included (a LayerNorm's mean and variance over channels ignore their order).
    # 2. Each block's MLP hidden units (as in the ``mlp``).
    # 3. Each block's attention heads: a head's query, key and value rows and its columns of the
    #    output projection move together. Permutations inside a head (its query/key dimensions,
    #    its value dimensions) are exact too but left out: nested in the heads' permutation they
    #    would not be independent groups, and matching them as well barely shortens attention's
    #    distance between aligned runs (docs/results.md, 'What did not work').
    if "patch_embed.weight" not in shapes:
        names = sorted(shapes)
        raise PermutationError("vit: no entry 'patch_embed.weight', which gives the residual width; "
                               f"entries: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}")
    dim = shapes["patch_embed.weight"][0]
    if dim % heads:
        raise PermutationError(f"vit: width {dim} (patch_embed.weight) is not a multiple of its {heads} heads")
    blocks = [p.removesuffix(".norm1") for _, p in _indexed(shapes, r"blocks\.(\d+)\.norm1\.weight")]
    residual = [Axis("patch_embed.weight", 0), Axis("patch_embed.bias", 0), Axis("cls_token", 2),
                Axis("pos_embed", 2), Axis("norm.weight", 0), Axis("norm.bias", 0), Axis("head.weight", 1)]
    inner = []
    for b in blocks:
        residual += [Axis(f"{b}.{n}", d) for n, d in (
            ("norm1.weight", 0), ("norm1.bias", 0), ("attn.in_proj_weight", 1), ("attn.out_proj.weight", 0),
            ("attn.out_proj.bias", 0), ("norm2.weight", 0), ("norm2.bias", 0), ("mlp.0.weight", 1),
            ("mlp.2.weight", 0), ("mlp.2.bias", 0))]
        inner.append(HiddenGroup(shapes[f"{b}.mlp.0.weight"][0], (
            Axis(f"{b}.mlp.0.weight", 0), Axis(f"{b}.mlp.0.bias", 0), Axis(f"{b}.mlp.2.weight", 1))))
        inner.append(HiddenGroup(heads, (
            Axis(f"{b}.attn.in_proj_weight", 0, dim // heads, outer=3),
            Axis(f"{b}.attn.in_proj_bias", 0, dim // heads, outer=3),
            Axis(f"{b}.attn.out_proj.weight", 1, dim // heads))))
    groups = [HiddenGroup(dim, tuple(residual))] + inner
    return [HiddenGroup(g.size, tuple(a for a in g.axes if a.name in shapes)) for g in groups]


def _vit_heads(kwargs: dict) -> int:
    # nn.MultiheadAttention stores no head count among its tensors: it is the net's ``heads``.
    return int(kwargs.get("heads", signature(vit).parameters["heads"].default))


# net name -> groups from the entries' shapes and the net's build kwargs (a ViT's head count)
GROUPS = {"mlp": lambda shapes, kwargs: _mlp_groups(shapes), "cnn": lambda shapes, kwargs: _cnn_groups(shapes),
          "vit": lambda shapes, kwargs: _vit_groups(shapes, _vit_heads(kwargs))}


def hidden_groups(net: str, shapes: dict[str, tuple[int, ...]], kwargs: dict | None = None) -> list[HiddenGroup]:
    """The hand-written permutable hidden layers of net ``net`` (a name in ``GROUPS``), from its entries'
    shapes and the keyword arguments it was built with (``net.kwargs``; a ViT's ``heads``). Other
    nets: ``weightgen.nets.symmetry.permutation_groups``."""
    if net not in GROUPS:
        raise PermutationError(f"no hand-written permutation groups for net '{net}' (only for {', '.join(GROUPS)}); "
                               "weightgen.nets.symmetry.permutation_groups finds those of other nets")
    return GROUPS[net]({k: tuple(v) for k, v in shapes.items()}, dict(kwargs or {}))


def random_permutations(groups: list[HiddenGroup], n: int, generator: torch.Generator | None = None) -> list[Tensor]:
    """One ``(n, size)`` tensor per group: a random permutation of its units for each of ``n`` networks."""
    return [torch.rand(n, g.size, generator=generator).argsort(1) for g in groups]


def _by_unit(x: Tensor, axis: Axis, size: int) -> tuple[Tensor, torch.Size]:
    """Stacked entry ``x`` ``(B, ...)`` viewed as ``(B, size, outer, -1)``: unit u's values along
    ``axis.dim`` (its block, in each ``outer`` part, with every other dimension) in row u; and the
    shape ``_from_units`` needs to put such a view back."""
    x = x.movedim(axis.dim + 1, 1)
    return x.reshape(x.shape[0], axis.outer, size, -1).movedim(2, 1), x.shape


def _from_units(units: Tensor, axis: Axis, moved: torch.Size) -> Tensor:
    """The inverse of ``_by_unit``."""
    return units.movedim(1, 2).reshape(moved).movedim(1, axis.dim + 1)


def _permute_axis(x: Tensor, axis: Axis, perm: Tensor) -> Tensor:
    """``x`` ``(B, ...)`` with the units along ``axis.dim`` (a dimension of one row, not counting B)
    reordered, row b by ``perm[b]`` (``perm``: ``(B, units)``), in each of its ``outer`` parts."""
    units, moved = _by_unit(x, axis, perm.shape[1])
    return _from_units(units[torch.arange(len(perm), device=x.device)[:, None], perm.to(x.device)], axis, moved)


def permute_batch(states: dict[str, Tensor], groups: list[HiddenGroup], perms: list[Tensor]) -> dict[str, Tensor]:
    """Stacked state_dicts ``name -> (B, *shape)`` with row b's hidden units permuted by ``perms[g][b]``.

    Entries of a group that ``states`` lacks are skipped (callers choose which groups apply);
    entries in no group come back unchanged (the same tensor).
    """
    out = dict(states)
    for group, perm in zip(groups, perms):
        for axis in group.axes:
            if axis.name in out:
                out[axis.name] = _permute_axis(out[axis.name], axis, perm)
    return out


def permute_state(state: dict[str, Tensor], groups: list[HiddenGroup], perms: list[Tensor]) -> dict[str, Tensor]:
    """One state_dict permuted by ``perms`` (``(size,)`` tensors, one per group)."""
    batched = permute_batch({k: v.unsqueeze(0) for k, v in state.items()}, groups, [p.unsqueeze(0) for p in perms])
    return {k: v[0] for k, v in batched.items()}


def unit_values(x: Tensor, axis: Axis, size: int) -> Tensor:
    """Stacked entry ``x`` ``(B, ...)`` as ``(B, size, -1)``: row u of network b holds every value its
    unit u indexes along ``axis.dim`` (a dimension of one network, not counting B), its block and
    its row in each ``outer`` part together."""
    units, _ = _by_unit(x, axis, size)
    return units.reshape(len(units), size, -1)


def matching_permutations(state: dict[str, Tensor], reference: dict[str, Tensor], groups: list[HiddenGroup],
                          max_rounds: int = 100, seed: int = 0) -> list[Tensor]:
    """One ``(size,)`` tensor per group: the permutation of ``state``'s hidden units that brings its
    weights closest to ``reference``'s (weight matching, Ainsworth et al. 2023, "Git Re-Basin").

    Coordinate ascent: each layer in turn (random order per round) gets the linear assignment that
    maximizes the summed inner products of its units' values with the reference's, the other layers'
    permutations held; rounds repeat until none changes. Buffers (running statistics) are moved
    but not matched on. Apply with ``permute_state``: the network computes the same function."""
    from scipy.optimize import linear_sum_assignment

    perms = [torch.arange(g.size) for g in groups]
    rng = torch.Generator().manual_seed(seed)
    for _ in range(max_rounds):
        changed = False
        for gi in torch.randperm(len(groups), generator=rng).tolist():
            group = groups[gi]
            current = permute_state(state, groups, perms)
            score = torch.zeros(group.size, group.size, dtype=torch.float64)
            for axis in group.axes:
                if axis.buffer or axis.name not in state:
                    continue
                ref, cur = (unit_values(x[axis.name].unsqueeze(0), axis, group.size)[0].double()
                            for x in (reference, current))
                score += ref @ cur.T
            _, col = linear_sum_assignment(score.numpy(), maximize=True)
            col = torch.as_tensor(col, dtype=torch.long)
            if not torch.equal(col, torch.arange(group.size)):
                perms[gi], changed = perms[gi][col], True
        if not changed:
            break
    return perms
