"""Diagnostics: measurements that explain a generator's results, used by the benchmarks only.

The library's own flow (fit, sample, evaluate) never calls these. Each one answers a
question a result raises:

- ``teacher_forced_tokens``: how good is an RPG generator given a perfect past? Its gap to
  sampling is what reading its own tokens costs (``recurrent_input: tokens``).
- ``interpolated``: what does a network between two training runs, made without learning,
  score? The reference for any claim that a generator makes networks no run holds.
- ``predict_x0``: which clean data does a denoiser's output imply? Its error by noise level
  tells the model's error from the sampler's.
"""
from __future__ import annotations

import torch
from torch import Tensor

from weightgen.diffusion import Diffusion
from weightgen.evaluate.baselines import _check_names
from weightgen.generators.base import GeneratorError
from weightgen.generators.rpg import RPG
from weightgen.nets.constraints import constrain


@torch.no_grad()
def teacher_forced_tokens(gen: RPG, tokens: Tensor, states: Tensor, conditions: Tensor | None = None,
                          seed: int = 0, sampler: str = "ddim", steps: int | None = None) -> Tensor:
    """Every token of ``tokens`` ``(n, T, W)`` generated afresh from noise by the RPG generator
    ``gen`` (``recurrent_input: tokens``), its prototype read from the true tokens before it, as in
    training. ``states``: each row's permutation state (``gen.state_index``); a conditional generator
    also takes each row's condition, as ``gen.member_conditions`` gives them. Padding comes back 0."""
    if gen.spec.recurrent_input != "tokens":
        raise GeneratorError("teacher_forced_tokens needs a generator with recurrent_input: tokens")
    if (conditions is None) != (gen.spec.condition == "none"):
        raise GeneratorError(f"this generator's condition is {gen.spec.condition!r}: teacher_forced_tokens "
                             + ("takes no conditions" if conditions is not None else "needs each row's condition"))
    net = gen.sampling_module(gen.net)
    n, T, W = tokens.shape
    proto = net.prototypes(states.to(gen.device), tokens.to(gen.device),
                           None if conditions is None else conditions.to(gen.device))  # (n, T, D)
    out = torch.empty(n, T, W)
    for s, t, values in gen.denoise_table(net, proto, torch.arange(n, device=gen.device), seed, sampler, steps):
        out[s, t] = values
    return out * (torch.arange(W) < gen.valid[:, None]).float()


def interpolated(train_stacked: dict[str, Tensor], names: list[str], runs: list[int], weight: float, n: int,
                 seed: int) -> dict[str, Tensor]:
    """``n`` models ``(1 - weight) * a + weight * b`` on the ``names`` tensors, for pairs of originals
    ``a``, ``b`` drawn by ``seed`` from two different runs (``runs[i]``: the run of original ``i``);
    every other entry taken from ``a``.

    On a zoo whose runs share one order of hidden units (``zoo.align``) this is a network between
    two runs that no run holds, made without any learning. On independent runs the line leaves
    the runs' basins (the midpoint is the weight average of two)."""
    b = _check_names(train_stacked, names)
    if len(runs) != b:
        raise ValueError(f"interpolated needs the run of each of the {b} originals (got {len(runs)})")
    if len(set(runs)) < 2:
        raise ValueError("interpolated needs originals from at least two runs")
    if n < 1 or not 0 <= weight <= 1:
        raise ValueError(f"interpolated needs n >= 1 and 0 <= weight <= 1 (got n={n}, weight={weight})")
    gen = torch.Generator().manual_seed(seed)
    run_of = torch.tensor(runs)
    first = torch.randint(b, (n,), generator=gen)
    second = torch.empty_like(first)
    for k, i in enumerate(first.tolist()):
        others = (run_of != run_of[i]).nonzero().flatten()
        second[k] = others[torch.randint(len(others), (1,), generator=gen)]
    out = {k: v[first.to(v.device)] for k, v in train_stacked.items()}
    for k in names:
        v = train_stacked[k]
        out[k] = constrain(k, torch.lerp(out[k], v[second.to(v.device)], weight))
    return out


def predict_x0(diffusion: Diffusion, prediction: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """The clean data a denoiser's output ``prediction`` implies at ``x_t``, timestep ``t`` (one per
    row), for ``diffusion``'s prediction type: epsilon, x0 (``sample``) or v (Salimans & Ho 2022)."""
    a = diffusion.train_scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype)
    if diffusion.prediction == "epsilon":
        return (x_t - (1 - a).sqrt() * prediction) / a.sqrt()
    if diffusion.prediction == "v_prediction":
        return a.sqrt() * x_t - (1 - a).sqrt() * prediction
    return prediction
