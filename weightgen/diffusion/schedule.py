"""DDPM training and DDPM/DDIM sampling through diffusers' schedulers (no hand-written schedules).

One ``Diffusion`` object serves every generator: it noises clean data for training,
computes the (optionally masked) loss for epsilon, x0 or v prediction, and runs the
reverse process with a seeded generator. The noise schedule is fixed: DDPM's betas, linear
from 1e-4 to 2e-2 (Ho et al. 2020, section 4), which p-diff, RPG and G.pt all use.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

# epsilon: the noise (DDPM, RPG and p-diff as published); sample: x0 (G.pt); v_prediction:
# v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022), so x0 = sqrt(abar) x_t - sqrt(1 - abar) v:
# near the data the input passes through and the model only corrects it, far from it the model
# predicts x0 directly; its loss is the x0 error weighted by 1 / (1 - abar), which stresses the last,
# most precise steps.
PREDICTIONS = ("epsilon", "sample", "v_prediction")
# DDPM's schedule (Ho et al. 2020): beta_t linear from BETA_START to BETA_END over the T steps.
BETA_START, BETA_END = 1e-4, 2e-2
log = logging.getLogger(__name__)
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> prediction
# (step index, timestep, x0 prediction) -> None to go on, or a tensor that sampling returns at once.
Callback = Callable[[int, int, torch.Tensor], "torch.Tensor | None"]
# ddpm: ancestral, T steps (Ho et al. 2020); ddim: deterministic at eta 0 (Song et al. 2021);
# dpm: DPM-Solver++ of order 2, multistep (Lu et al. 2022), a higher-order solver of the same ODE.
SAMPLERS = ("ddpm", "ddim", "dpm")  # the same as weightgen.config.SAMPLERS
# The default steps of each sampler (``sample``'s ``steps=None``); T for ddpm.
DEFAULT_STEPS = {"ddim": 60, "dpm": 25}

# -- a sharded fit: each rank keeps its rows of every global batch ------------------------------
_SHARD: tuple[int, int] | None = None  # (rank, world size) inside fit_distributed.sharded


def current_shard() -> tuple[int, int] | None:
    """(rank, world size) while a distributed fit runs (``weightgen.fit_distributed``), else None."""
    return _SHARD


@contextlib.contextmanager
def sharding(rank: int, world: int):
    """In the block, ``Diffusion.loss`` computes only rank ``rank``'s rows of each batch, scaled so
    that the mean of the ranks' losses (what DistributedDataParallel's gradient average sees) is
    the loss of the whole batch."""
    global _SHARD
    before, _SHARD = _SHARD, (rank, world)
    try:
        yield
    finally:
        _SHARD = before


def shard_rows(n: int) -> slice:
    """This rank's rows of a batch of ``n``: contiguous, as even as possible (all of them unsharded)."""
    if _SHARD is None:
        return slice(0, n)
    rank, world = _SHARD
    return slice(rank * n // world, (rank + 1) * n // world)


class Diffusion:
    def __init__(self, timesteps: int = 1000, prediction: str = "epsilon"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be 'epsilon', 'sample' (x0) or 'v_prediction', got {prediction!r}")
        self.kwargs = dict(num_train_timesteps=timesteps, beta_start=BETA_START, beta_end=BETA_END,
                           beta_schedule="linear", prediction_type=prediction,
                           # Parameters are not images in [-1, 1]: never clip.
                           clip_sample=False)
        self.timesteps = timesteps
        self.prediction = prediction
        self.train_scheduler = DDPMScheduler(**self.kwargs)
        self.callback: Callback | None = None  # set for a block by ``watching``

    @classmethod
    def from_spec(cls, spec) -> "Diffusion":
        """From a config's ``diffusion`` section (``weightgen.config.DiffusionSpec``)."""
        return cls(spec.timesteps, spec.prediction)

    def scheduler(self, sampler: str = "ddpm"):
        if sampler == "ddpm":
            return DDPMScheduler(**self.kwargs)
        if sampler == "ddim":
            return DDIMScheduler(**self.kwargs)
        if sampler == "dpm":
            kwargs = {k: v for k, v in self.kwargs.items() if k != "clip_sample"}
            return DPMSolverMultistepScheduler(**kwargs, algorithm_type="dpmsolver++", solver_order=2,
                                               thresholding=False, lower_order_final=True)
        raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")

    def loss(self, denoise: Callable[..., torch.Tensor], x0: torch.Tensor, mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None, batch_args: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
        """Mean squared error of the prediction at a uniformly drawn timestep per sample.

        ``mask`` (broadcastable to ``x0``) drops padding from the loss, as RPG does.
        ``batch_args``: tensors with one row per sample that ``denoise(x_t, t, *batch_args)``
        also reads (a condition). In a sharded fit (``sharding``) every rank draws the times
        and noise of the whole batch, from the same streams, and denoises only its own rows.
        """
        t = torch.randint(0, self.timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        total = None
        if _SHARD is not None:
            # The whole batch's count of loss terms, so that the ranks' losses average to its mean.
            total = (mask.expand_as(x0).sum() if mask is not None else torch.tensor(float(x0.numel()))).clamp_min(1)
            n, rows = x0.shape[0], shard_rows(x0.shape[0])
            if mask is not None and mask.dim() == x0.dim() and mask.shape[0] == n:
                mask = mask[rows]  # one mask row per sample; otherwise it is shared by every row
            x0, noise, t = x0[rows], noise[rows], t[rows]
            batch_args = tuple(a[rows] for a in batch_args)
        x_t = self.train_scheduler.add_noise(x0, noise, t)
        if self.prediction == "epsilon":
            target = noise
        elif self.prediction == "v_prediction":
            target = self.train_scheduler.get_velocity(x0, noise, t)
        else:
            target = x0
        err = (denoise(x_t, t, *batch_args) - target) ** 2
        if total is not None:
            weighted = err if mask is None else err * mask.expand_as(err).to(err.dtype)
            return weighted.sum() / total * _SHARD[1]
        if mask is None:
            return err.mean()
        mask = mask.expand_as(err).to(err.dtype)
        return (err * mask).sum() / mask.sum().clamp_min(1)

    @torch.no_grad()
    def sample(self, denoise: Denoise, shape: tuple[int, ...],
               generator: torch.Generator | list[torch.Generator] | None = None,
               sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0,
               device: torch.device | str = "cpu", temperature: float = 1.0,
               callback: Callback | None = None) -> torch.Tensor:
        """Run the reverse process from pure noise with ``sampler`` (``SAMPLERS``); ``steps``
        defaults to T for DDPM and ``DEFAULT_STEPS`` for the others.

        ``temperature`` scales the starting noise (``DiffusionSpec.temperature``).

        ``callback(step, t, x0_prediction)`` (default: the one ``watching`` set) sees the
        prediction of the clean sample after each step ``step`` (0 first) at timestep ``t``; where
        it returns a tensor, sampling stops and returns that instead. Pictures of a sample emerging
        from noise decode these predictions (weightgen/fields/render.py).

        ``generator`` may be a list with one CPU generator per row of the batch: each row
        then draws all its noise from its own stream, so results do not depend on how rows
        are batched (RPG samples chunks of tokens this way).
        """
        sched = self.scheduler(sampler)
        sched.set_timesteps(steps or (self.timesteps if sampler == "ddpm" else min(DEFAULT_STEPS[sampler], self.timesteps)))
        if temperature != 1 and sampler == "ddpm":
            log.warning("temperature %g scales only the starting noise; DDPM adds unscaled noise at every step, "
                        "so it changes little there: sample with ddim for low-temperature sampling", temperature)
        x = randn_tensor(shape, generator=generator, device=torch.device(device)) * temperature
        callback = callback or self.callback
        for step, t in enumerate(sched.timesteps):
            tt = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
            pred = denoise(x, tt)
            extra = {"eta": eta} if sampler == "ddim" else {}
            out = sched.step(pred, int(t), x, generator=generator, **extra)
            if callback is not None:
                x0 = getattr(out, "pred_original_sample", None)
                early = callback(step, int(t), x0 if x0 is not None else self.predicted_x0(pred, x, int(t)))
                x = out.prev_sample
                if early is not None:
                    return early
            else:
                x = out.prev_sample
        return x

    def predicted_x0(self, pred: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """The clean sample that prediction ``pred`` at ``x_t``, timestep ``t``, implies (Ho et al. 2020,
        eq. 15 for epsilon; Salimans & Ho 2022 for v), for samplers whose step does not return it."""
        abar = self.train_scheduler.alphas_cumprod[t].to(x_t.device, x_t.dtype)
        if self.prediction == "epsilon":
            return (x_t - (1 - abar).sqrt() * pred) / abar.sqrt()
        if self.prediction == "v_prediction":
            return abar.sqrt() * x_t - (1 - abar).sqrt() * pred
        return pred

    @contextlib.contextmanager
    def watching(self, callback: Callback):
        """Every ``sample`` call in the block reports to ``callback`` (see ``sample``): a generator
        samples through its own code and never passes a callback on, so this reaches its loop."""
        before, self.callback = self.callback, callback
        try:
            yield self
        finally:
            self.callback = before
