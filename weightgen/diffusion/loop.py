"""The training loop every generator shares: short and visible (nanoGPT/DiT style)."""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from weightgen import checkpointing
from weightgen.progress import progress_bar

from .schedule import current_shard

log = logging.getLogger(__name__)


def ema_decay(decay: float, warmup: bool, updates: int) -> float:
    """The decay of the EMA's next update, after ``updates`` updates. With ``warmup`` it is
    ``min(decay, (1 + n) / (10 + n))``, the schedule of diffusers' ``EMAModel``: early averages
    follow the model closely instead of holding on to its first weights."""
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


def make_ema(model: nn.Module, decay: float | None, warmup: bool = False) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights (None when decay is None/0); with
    ``warmup`` its decay follows ``ema_decay``."""
    if not decay:
        return None
    if not warmup:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    else:
        @torch.no_grad()
        def update(ema_params, params, n_averaged) -> None:
            get_ema_multi_avg_fn(ema_decay(decay, True, int(n_averaged)))(ema_params, params, n_averaged)

        ema = AveragedModel(model, multi_avg_fn=update, use_buffers=True)
    ema.decay, ema.warmup = decay, warmup  # read by warn_short_ema
    return ema


def warn_short_ema(ema: AveragedModel, steps: int, desc: str) -> None:
    """Warn when a fit is too short for its EMA. At a constant decay d the initial weights still
    hold d ** steps of the average after ``steps`` updates, and the first 1 / (1 - d) steps, when
    the model was far from fitted, about as much again: such an EMA can sample far worse than the
    model it averages (docs/results.md, "Whole networks"), or better when the initialization is a
    safe answer (G.pt's identity): the warning names ``ema_warmup`` without recommending it."""
    decay = getattr(ema, "decay", None)
    if decay is None or getattr(ema, "warmup", False) or decay ** steps <= 0.01:
        return
    span = round(1 / (1 - decay))
    log.warning("%s: ema %g over %d steps leaves %.0f%% of the average to the initial weights and %.0f%% to "
                "the first %d steps (ema_warmup: true averages the late weights only)", desc, decay, steps,
                100 * decay ** steps, 100 * (decay ** max(steps - span, 0) - decay ** steps), span)


LR_SCHEDULES = ("constant", "cosine")


def train_steps(model: nn.Module, loss_fn: Callable[[int], torch.Tensor], steps: int, lr: float,
                weight_decay: float = 0.0, ema: AveragedModel | None = None, desc: str = "train",
                show_progress: bool = True, grad_clip: float | None = 1.0, lr_schedule: str = "constant",
                rngs: dict[str, torch.Generator] | None = None) -> list[float]:
    """AdamW for ``steps`` steps on ``loss_fn(step)``; returns the loss every step.

    ``loss_fn`` draws its own batch, so the loop does not care how data is stored.
    ``lr_schedule``: ``constant`` (p-diff, RPG), or ``cosine`` (G.pt's released configs;
    ours elsewhere): the rate follows a half cosine from ``lr`` to 0 over ``steps``, so the
    last steps stop bouncing around the minimum instead of ending wherever the last batch
    left them. ``grad_clip``: the gradient-norm bound (None: none).

    ``rngs``: the ``torch.Generator`` objects ``loss_fn`` draws from, by name. Inside
    ``checkpointing.checkpointing`` the loop saves its whole state (these streams included)
    every N steps and resumes from a saved one (weightgen/checkpointing.py). Inside
    ``schedule.sharding`` (weightgen/fit_distributed.py) the model runs under DistributedDataParallel: each rank draws
    the same global batch, ``Diffusion.loss`` keeps its rows, and DDP averages the gradients.
    """
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
    rngs = rngs or {}
    ck = checkpointing.active()
    if ck is not None:
        ck.next_phase()
        skipped = ck.skipped_losses()
        if skipped is not None:
            log.info("%s: done before the checkpoint, not run again", desc)
            ck.done_phases[ck.phase] = skipped
            return skipped
    if ema is not None:
        warn_short_ema(ema, steps, desc)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1)) if lr_schedule == "cosine" else None
    first, losses = ck.restore(opt, sched, rngs) if ck is not None else (0, [])
    forward = _distributed(model, loss_fn)
    model.train()
    with progress_bar(show_progress) as bar:
        job = bar.add_task(desc, total=steps)
        bar.advance(job, first)
        for step in range(first, steps):
            loss = forward(step)
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
            if ck is not None and ck.due(step + 1, steps):
                ck.save(step + 1, losses, opt, sched, rngs)
    if ck is not None:
        ck.done_phases[ck.phase] = losses
    log.info("%s: final loss %.5g after %d steps", desc, losses[-1] if losses else float("nan"), steps)
    return losses


class _LossModule(nn.Module):
    """``loss_fn`` as a module holding ``model``, so DistributedDataParallel can wrap the step:
    its forward prepares the gradient all-reduce that the backward then runs."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[int], torch.Tensor]):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, step: int) -> torch.Tensor:
        return self.loss_fn(step)


def _distributed(model: nn.Module, loss_fn: Callable[[int], torch.Tensor]) -> Callable[[int], torch.Tensor]:
    """``loss_fn`` itself, or under a sharded fit the same step through DistributedDataParallel."""
    if current_shard() is None:
        return loss_fn
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    # Parameters a step leaves without a gradient (a part of the model this loss does not reach)
    # are allowed. Every rank starts from the same seeded weights; DDP broadcasts rank 0's anyway,
    # and its buffers (BatchNorm statistics, which each rank computes on its own rows) at every step.
    return DistributedDataParallel(_LossModule(model, loss_fn), device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=True)
