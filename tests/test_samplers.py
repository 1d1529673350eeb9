"""The samplers of weightgen/diffusion/schedule.py: with the exact denoiser of a point mass, DDIM and
DPM-Solver++ land on it in a few steps for every prediction type, the callback sees their x0
predictions, and an unknown sampler is named with the allowed ones."""
from __future__ import annotations

import pytest
import torch

from weightgen.diffusion.schedule import SAMPLERS, Diffusion

CENTRE = torch.tensor([0.5, -1.0, 2.0])


def exact(diffusion: Diffusion):
    """The denoiser of data that is always ``CENTRE``: what each prediction type should output."""
    abar_all = diffusion.train_scheduler.alphas_cumprod

    def denoise(x_t, t):
        abar = abar_all[t].view(-1, *[1] * (x_t.dim() - 1))
        eps = (x_t - abar.sqrt() * CENTRE) / (1 - abar).sqrt()
        if diffusion.prediction == "epsilon":
            return eps
        if diffusion.prediction == "v_prediction":
            return abar.sqrt() * eps - (1 - abar).sqrt() * CENTRE
        return CENTRE.expand_as(x_t)

    return denoise


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("dpm", 10), ("dpm", 25)])
def test_few_step_samplers_land_on_the_data(prediction, sampler, steps):
    diffusion = Diffusion(1000, prediction)
    seen = []
    x = diffusion.sample(exact(diffusion), (4, 3), torch.Generator().manual_seed(0), sampler, steps,
                         callback=lambda i, t, x0: seen.append(x0.clone()))
    assert torch.allclose(x, CENTRE.expand(4, 3), atol=1e-3)
    assert len(seen) == steps and torch.allclose(seen[0], CENTRE.expand(4, 3), atol=1e-3)


def test_an_unknown_sampler_is_named_with_the_allowed_ones():
    assert SAMPLERS == ("ddpm", "ddim", "dpm")
    with pytest.raises(ValueError, match="unknown sampler 'heun'; allowed: ddpm, ddim, dpm"):
        Diffusion(10).scheduler("heun")
