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
from diffusers import DDIMScheduler, DDPMScheduler
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
        raise ValueError(f"unknown sampler {sampler!r}; allowed: ddpm, ddim")

    def loss(self, denoise: Denoise, x0: torch.Tensor, mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error of the prediction at a uniformly drawn timestep per sample.

        ``mask`` (broadcastable to ``x0``) drops padding from the loss, as RPG does.
        """
        t = torch.randint(0, self.timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        x_t = self.train_scheduler.add_noise(x0, noise, t)
        if self.prediction == "epsilon":
            target = noise
        elif self.prediction == "v_prediction":
            target = self.train_scheduler.get_velocity(x0, noise, t)
        else:
            target = x0
        err = (denoise(x_t, t) - target) ** 2
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
        """Run the reverse process from pure noise; ``steps`` defaults to T for DDPM, 60 for DDIM.

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
        sched.set_timesteps(steps or (self.timesteps if sampler == "ddpm" else min(60, self.timesteps)))
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
            x = out.prev_sample
            if callback is not None:
                early = callback(step, int(t), out.pred_original_sample)
                if early is not None:
                    return early
        return x

    @contextlib.contextmanager
    def watching(self, callback: Callback):
        """Every ``sample`` call in the block reports to ``callback`` (see ``sample``): a generator
        samples through its own code and never passes a callback on, so this reaches its loop."""
        before, self.callback = self.callback, callback
        try:
            yield self
        finally:
            self.callback = before
