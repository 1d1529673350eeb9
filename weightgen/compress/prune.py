"""Magnitude pruning with ``torch.nn.utils.prune``, and the two recipes of ``zoo.compress.prune``.

``magnitude``: the trained network loses its smallest-magnitude entries (one threshold over every
pruned tensor with ``scope: global``, the same fraction of each with ``layer``) and is fine-tuned with
the mask fixed, so it recovers what pruning cost. ``lottery`` (Frankle and Carbin 2019, iterative
magnitude pruning): prune the trained network a step, rewind the survivors to the run's initial
values, train again, and repeat, ``rounds`` times, each round removing the same fraction of what is
left, until the sparsity is reached; the last training's result is the ticket.
Masks are bool tensors by state_dict name: True where an entry is kept.
"""
from __future__ import annotations

import fnmatch

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from weightgen.config import PruneSpec, TrainSpec
from weightgen.tasks.base import Task
from weightgen.zoo.train import Schedule, resolve_device, score, train_member


def check_sparsity(sparsity: float) -> float:
    if not 0 < sparsity < 1:
        raise ValueError(f"sparsity {sparsity} is outside (0, 1): give the fraction of entries removed, e.g. 0.9")
    return sparsity


def targets(model: nn.Module, include: list[str]) -> list[tuple[nn.Module, str, str]]:
    """``(module, parameter name, state_dict name)`` of every parameter with 2 or more dims that
    ``include`` matches, in state_dict order."""
    out = []
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p.dim() >= 2 and any(fnmatch.fnmatchcase(full, pat) for pat in include):
                out.append((module, p_name, full))
    if not out:
        names = [n for n, p in model.named_parameters() if p.dim() >= 2][:6]
        raise ValueError(f"compress include {include} matches no parameter with 2 or more dims; they are: {names}")
    return out


def magnitude_masks(model: nn.Module, include: list[str], sparsity: float, scope: str = "global") -> dict[str, Tensor]:
    """The masks that remove a ``sparsity`` fraction of the ``include`` entries by magnitude
    (L1 unstructured pruning); ``model`` is left as it was."""
    check_sparsity(sparsity)
    tgt = targets(model, include)
    if scope == "global":
        prune.global_unstructured([(m, p) for m, p, _ in tgt], pruning_method=prune.L1Unstructured, amount=sparsity)
    elif scope == "layer":
        for m, p, _ in tgt:
            prune.l1_unstructured(m, p, amount=sparsity)
    else:
        raise ValueError(f"scope {scope!r} is not one of global, layer")
    masks = {full: getattr(m, f"{p}_mask").bool().clone() for m, p, full in tgt}
    for m, p, _ in tgt:  # back to the plain parameter, unpruned
        orig = getattr(m, f"{p}_orig").detach().clone()
        prune.remove(m, p)
        with torch.no_grad():
            getattr(m, p).copy_(orig)
    return masks


def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Fix ``masks`` on ``model`` (``prune.custom_from_mask``): training keeps the pruned entries at zero."""
    by_name = {full: (m, p) for m, p, full in targets(model, ["*"])}
    pruned = []
    for name, mask in masks.items():
        if name not in by_name:
            raise ValueError(f"mask for '{name}', which the net has no prunable parameter of")
        m, p = by_name[name]
        prune.custom_from_mask(m, p, mask.to(getattr(m, p).device))
        pruned.append((m, next(h for h in m._forward_pre_hooks.values()
                               if isinstance(h, prune.BasePruningMethod) and h._tensor_name == p)))

    # A module's own pre-hook recomputes its masked weight only when that module is called; a parent that reads
    # the weight directly (MultiheadAttention's out_proj) would reuse a stale one. The root refreshes them all.
    def refresh(_module, _inputs):
        for m, method in pruned:
            method(m, None)

    model._weightgen_refresh = model.register_forward_pre_hook(refresh)


def make_permanent(model: nn.Module) -> None:
    """Every pruning reparametrization folded into its parameter (pruned entries are zeros)."""
    handle = getattr(model, "_weightgen_refresh", None)
    if handle is not None:
        handle.remove()
        del model._weightgen_refresh
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(m, hook._tensor_name)


def train_masked(model: nn.Module, masks: dict[str, Tensor], task: Task, train: TrainSpec, steps: int, seed: int,
                 device: str = "auto", tail: tuple[str, ...] = ()) -> dict[str, float]:
    """Train ``model`` ``steps`` optimizer steps with ``masks`` fixed (the zoo's recipe and data order);
    returns its metrics. With ``tail`` (a ``tail`` zoo), only those parameters train, in eval mode, as
    the zoo's own tail phase does. The model ends with plain parameters, zeros where pruned."""
    apply_masks(model, masks)
    if steps > 0:
        schedule = Schedule(0, [steps], tail_steps=steps, tail=tail) if tail else Schedule(steps, [steps])
        (_, _, metrics), = train_member(model, task, train, schedule, seed, device=device)
    else:
        dev = resolve_device(device)
        metrics = score(model.to(dev), task, dev)
    make_permanent(model)
    model.cpu()
    return metrics


def prune_checkpoint(model: nn.Module, spec: PruneSpec, task: Task, train: TrainSpec, seed: int,
                     init: dict[str, Tensor] | None = None, main_steps: int = 0,
                     shared: dict[str, Tensor] | None = None, device: str = "auto",
                     tail: tuple[str, ...] = ()) -> tuple[dict[str, Tensor], dict]:
    """Prune the trained ``model`` in place by ``spec``'s recipe; returns (masks, metrics).

    ``shared``: the zoo's one mask (``mask: shared``), used instead of the model's own. ``lottery``
    needs ``init`` (the run's initial state_dict) and ``main_steps`` (a run's length)."""
    if spec.recipe == "magnitude":
        masks = shared if shared is not None else magnitude_masks(model, spec.include, spec.sparsity, spec.scope)
        return masks, train_masked(model, masks, task, train, spec.finetune_steps, seed, device, tail)
    if init is None:
        raise ValueError("recipe 'lottery' needs the run's initial weights")
    metrics: dict = {}
    for r in range(1, spec.rounds + 1):
        keep = (1 - spec.sparsity) ** (r / spec.rounds)
        masks = magnitude_masks(model, spec.include, 1 - keep, spec.scope)
        model.load_state_dict(init)  # rewind the survivors to their initial values
        metrics = train_masked(model, masks, task, train, main_steps, seed, device, tail)
    return masks, metrics
