"""Training one zoo member: a short, visible SGD/Adam loop that hands out checkpoints.

The loop knows nothing about storage: it yields ``(step, state_dict, metrics)`` at the
steps it is asked to keep, and the builder writes them.
"""
from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from weightgen.config import TrainSpec
from weightgen.tasks import Task


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no GPU")
    return torch.device(device)


def make_optimizer(params, spec: TrainSpec) -> torch.optim.Optimizer:
    """The optimizer ``spec.optimizer`` names, with the recipe's learning rate and weight decay."""
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def match_any(name: str, patterns: list[str]) -> bool:
    """Whether ``name`` matches any of the glob ``patterns``."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@torch.no_grad()
def score(model: nn.Module, task: Task, device: torch.device, batch: int = 2048) -> dict[str, float]:
    """Every metric of the task (``task.metrics``) on every split, as ``<split>_<metric>``, model in
    eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    out = {}
    for split in ("train", "val", "test"):
        if task.evaluate is not None:  # the task scores networks itself (``Task.evaluate``)
            own = task.evaluate(model, {k: v[None] for k, v in model.state_dict().items()}, split)
            out.update({f"{split}_{name}": float(own.metrics[name][0]) for name in task.metrics})
            continue
        x, y = task.split(split)
        outputs = torch.cat([model(x[i:i + batch].to(device)) for i in range(0, len(x), batch)]).cpu()
        s = task.scores(outputs, y)
        out.update({f"{split}_{name}": s[name] for name in task.metrics})
    model.train(was_training)
    return out


@dataclass
class Schedule:
    """What to train and which steps to keep.

    ``steps`` counts optimizer steps from 0 (the initial weights) to
    ``main_steps + tail_steps``; the tail phase trains only ``tail`` parameters.
    """

    main_steps: int
    keep: list[int]
    tail_steps: int = 0
    tail: tuple[str, ...] = ()


def steps_per_epoch(task: Task, batch_size: int) -> int:
    """Batches in one pass over the training split (the last one may be short)."""
    return -(-len(task.y_train) // batch_size)


def train_member(model: nn.Module, task: Task, spec: TrainSpec, schedule: Schedule, seed: int,
                 timing: dict | None = None, device: str = "auto"
                 ) -> Iterator[tuple[int, dict[str, torch.Tensor], dict[str, float]]]:
    """Train ``model`` on ``device`` (``auto``: a GPU if torch sees one) and yield the kept checkpoints.

    ``timing["train_seconds"]`` accumulates optimizer time only (not scoring or storage):
    the honest cost of SGD that generation is compared with.
    """
    timing = timing if timing is not None else {}
    timing["train_seconds"] = 0.0
    device = resolve_device(device)
    model.to(device)
    x_train, y_train = task.x_train.to(device), task.y_train.to(device)
    gen = torch.Generator().manual_seed(seed)
    keep = set(schedule.keep)
    total = schedule.main_steps + schedule.tail_steps

    def snapshot(step: int):
        return step, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, score(model, task, device)

    model.train()
    opt = make_optimizer(model.parameters(), spec)
    step, order, pos = 0, torch.empty(0, dtype=torch.long), 0
    if 0 in keep:
        yield snapshot(0)
    while step < total:
        if step == schedule.main_steps and schedule.tail_steps:
            # p-diff's second phase: only the tail keeps training. Every module runs in
            # eval mode so BatchNorm statistics (which are not generated) stay fixed and
            # every saved checkpoint shares them with the reference checkpoint.
            for name, p in model.named_parameters():
                p.requires_grad_(match_any(name, list(schedule.tail)))
            model.eval()
            opt = make_optimizer([p for p in model.parameters() if p.requires_grad], spec)
        tick = time.perf_counter()
        if pos >= len(order):
            order, pos = torch.randperm(len(y_train), generator=gen).to(device), 0
        idx = order[pos:pos + spec.batch_size]
        pos += spec.batch_size
        loss = task.loss(model(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        timing["train_seconds"] += time.perf_counter() - tick
        if step in keep:
            yield snapshot(step)
