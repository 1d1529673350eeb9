"""BatchNorm folded into the layer before it, the BatchNorm left an identity (``zoo.fold_bn``, ours).

In evaluation a BatchNorm after a conv or linear layer computes
``gamma * (W x + b - mu) / sqrt(var + eps) + beta``: the same function as the layer with
``W' = s W`` and shift ``(b - mu) s + beta`` (``s = gamma / sqrt(var + eps)``) followed by a BatchNorm
that does nothing (``gamma = 1, beta = 0, mu = 0, var = 1 - eps``). Folding is that rewrite of a
state dict, for the same architecture: the network's outputs in eval mode are unchanged and it loads
into the same module.

Why a generator wants it: RPG generates every tensor, BatchNorm statistics included, each token with
its own noise, so a generated running mean need not match the mean of the activations its generated
weights make. Samples lose accuracy to both generated statistics, the means and the variances
(docs/results.md, 'Whole networks'). Folded, a network has no statistics to contradict its weights;
the BatchNorm entries are the same constants in every checkpoint, for the tokenizer to leave out.

Only the eval-mode function is kept: a folded network put back in training mode normalizes with
batch statistics and learns a fresh gamma/beta from 1/0, not the original's.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
FOLD_META = "bn_folded"  # the zoo metadata a fold writes (``weightgen.zoo.fold``) and ``folded_entries`` reads


class FoldError(ValueError):
    """The network cannot be traced to find its (layer, BatchNorm) pairs."""


@dataclass(frozen=True)
class FoldPair:
    """One foldable (layer, BatchNorm) pair of a net, as the zoo's ``bn_folded`` metadata stores it."""

    layer: str  # the conv / linear module's name
    bn: str  # the BatchNorm reading only that layer's output
    eps: float
    layer_bias: bool  # the shift goes into the layer's bias when it has one, else into the BatchNorm's


def fold_pairs(net: nn.Module) -> list[FoldPair]:
    """Every (layer, BatchNorm) of ``net`` where the BatchNorm's input is the output of a conv or
    linear layer that nothing else reads, found by tracing the forward pass (``torch.fx``). A module
    called more than once (shared weights) is never folded: the fold would change its other uses."""
    try:
        graph = torch.fx.symbolic_trace(net).graph
    except Exception as e:  # fx raises many kinds for control flow it cannot follow
        raise FoldError(f"cannot trace {type(net).__name__} to find its conv-BatchNorm pairs ({type(e).__name__}: {e}); "
                        "use zoo.fold_bn: false") from None
    modules = dict(net.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], BATCHNORMS):
            continue
        bn, src = modules[node.target], node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(modules[src.target], FOLDABLE)):
            continue
        layer = modules[src.target]
        if len(src.users) != 1 or calls[src.target] > 1 or calls[node.target] > 1 or not bn.track_running_stats:
            continue
        has_bias = layer.bias is not None
        if not has_bias and not bn.affine:
            continue  # no tensor could hold the shift
        pairs.append(FoldPair(src.target, node.target, bn.eps, has_bias))
    return pairs


def is_folded(state: dict[str, torch.Tensor], pair: FoldPair) -> bool:
    """Whether ``pair``'s BatchNorm in ``state`` already does nothing (a folded checkpoint)."""
    p = pair.bn
    identity_var = torch.full_like(state[f"{p}.running_var"], 1 - pair.eps)
    if not (torch.equal(state[f"{p}.running_mean"], torch.zeros_like(identity_var))
            and torch.equal(state[f"{p}.running_var"], identity_var)):
        return False
    if f"{p}.weight" in state and not torch.equal(state[f"{p}.weight"], torch.ones_like(identity_var)):
        return False
    return not (pair.layer_bias and f"{p}.bias" in state and bool(state[f"{p}.bias"].any()))


@torch.no_grad()
def fold_batchnorm(state: dict[str, torch.Tensor], pairs: list[FoldPair]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with every pair's BatchNorm folded into its layer (see the module
    docstring); a pair already folded is left as it is, so folding twice changes nothing."""
    out = dict(state)
    for pair in pairs:
        if is_folded(state, pair):
            continue
        p, w_name, b_name = pair.bn, f"{pair.layer}.weight", f"{pair.layer}.bias"
        weight = state[w_name]
        mean, var = state[f"{p}.running_mean"].double(), state[f"{p}.running_var"].double()
        gamma = state[f"{p}.weight"].double() if f"{p}.weight" in state else torch.ones_like(mean)
        beta = state[f"{p}.bias"].double() if f"{p}.bias" in state else torch.zeros_like(mean)
        s = gamma / (var + pair.eps).sqrt()
        bias = state[b_name].double() if pair.layer_bias else torch.zeros_like(mean)
        shift = (bias - mean) * s + beta
        out[w_name] = (weight.double() * s.view(-1, *[1] * (weight.dim() - 1))).to(weight.dtype)
        if pair.layer_bias:
            out[b_name] = shift.to(state[b_name].dtype)
        if f"{p}.bias" in state:
            out[f"{p}.bias"] = (torch.zeros_like(shift) if pair.layer_bias else shift).to(state[f"{p}.bias"].dtype)
        if f"{p}.weight" in state:
            out[f"{p}.weight"] = torch.ones_like(state[f"{p}.weight"])
        out[f"{p}.running_mean"] = torch.zeros_like(state[f"{p}.running_mean"])
        out[f"{p}.running_var"] = torch.full_like(state[f"{p}.running_var"], 1 - pair.eps)
    return out


def folded_entries(meta: dict | None) -> list[str]:
    """The state-dict entries folding made constant, from a zoo's ``bn_folded`` metadata (none for
    an unfolded zoo): each pair's BatchNorm statistics and scale, and its shift where the layer's bias took it."""
    out = []
    for pair in (FoldPair(**p) for p in (meta or {}).get("pairs", [])):
        out += [f"{pair.bn}.weight", f"{pair.bn}.running_mean", f"{pair.bn}.running_var"]
        if pair.layer_bias:
            out.append(f"{pair.bn}.bias")
    return out
