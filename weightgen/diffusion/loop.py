"""The training loop every generator shares: short and visible (nanoGPT/DiT style)."""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from weightgen.progress import progress_bar

log = logging.getLogger(__name__)


def make_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights (None when decay is None/0)."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


LR_SCHEDULES = ("constant", "cosine")


def train_steps(model: nn.Module, loss_fn: Callable[[int], torch.Tensor], steps: int, lr: float,
                weight_decay: float = 0.0, ema: AveragedModel | None = None, desc: str = "train",
                show_progress: bool = True, grad_clip: float | None = 1.0, lr_schedule: str = "constant") -> list[float]:
    """AdamW for ``steps`` steps on ``loss_fn(step)``; returns the loss every step.

    ``loss_fn`` draws its own batch, so the loop does not care how data is stored.
    ``lr_schedule``: ``constant`` (p-diff, RPG), or ``cosine`` (G.pt's released configs;
    ours elsewhere): the rate follows a half cosine from ``lr`` to 0 over ``steps``, so the
    last steps stop bouncing around the minimum instead of ending wherever the last batch
    left them. ``grad_clip``: the gradient-norm bound (None: none).
    """
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1)) if lr_schedule == "cosine" else None
    losses = []
    model.train()
    with progress_bar(show_progress) as bar:
        job = bar.add_task(desc, total=steps)
        for step in range(steps):
            loss = loss_fn(step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(loss.item())
            if step % 200 == 0 or step == steps - 1:
                bar.update(job, description=f"{desc} loss {losses[-1]:.4g}")
            bar.advance(job)
    log.info("%s: final loss %.5g after %d steps", desc, losses[-1] if losses else float("nan"), steps)
    return losses
