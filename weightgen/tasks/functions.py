"""``functions``: a regression task made by the code, a smooth function of two inputs (no download).

Inputs are points drawn uniformly from the square [-1, 1]^2 with a fixed seed, split 60 / 20 / 20.
The training targets carry fixed Gaussian noise; validation and test targets are the clean function,
so a network's metrics measure the function it learned rather than the noise it memorized.
"""
from __future__ import annotations

import math

import torch

from .base import RegressionTask
from .registry import TASKS

FUNCTIONS = {
    # A product of waves: one full period along each input.
    "waves": lambda x: torch.sin(math.pi * x[:, 0]) * torch.cos(math.pi * x[:, 1]),
    # A Gaussian bump off centre.
    "bump": lambda x: 2.0 * torch.exp(-4.0 * ((x[:, 0] - 0.3).square() + (x[:, 1] + 0.2).square())) - 1.0,
    # Rings around the origin.
    "ripple": lambda x: torch.cos(4.0 * x.norm(dim=1)),
}


@TASKS.register("functions")
def functions(function: str = "waves", num_samples: int = 1000, noise: float = 0.05, seed: int = 0) -> RegressionTask:
    """``function`` (waves, bump or ripple) sampled at ``num_samples`` points; ``noise`` is the standard
    deviation of the noise on the training targets. The targets span [-1, 1], so ``data_range`` is 2;
    an example is a failure where the prediction is off by more than 0.1, a twentieth of that span."""
    if function not in FUNCTIONS:
        raise ValueError(f"task 'functions': unknown function '{function}'; allowed: {', '.join(FUNCTIONS)}")
    if num_samples < 5:
        raise ValueError(f"task 'functions': num_samples is {num_samples}; it needs at least 5 for three splits")
    gen = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.rand(num_samples, 2, generator=gen) - 1.0
    y = FUNCTIONS[function](x)[:, None]
    n_train, n_val = int(0.6 * num_samples), int(0.2 * num_samples)
    y_train = y[:n_train] + noise * torch.randn(n_train, 1, generator=gen)
    val, test = slice(n_train, n_train + n_val), slice(n_train + n_val, None)
    return RegressionTask("functions", x[:n_train], y_train, x[val], y[val], x[test], y[test],
                          data_range=2.0, tolerance=0.1)
