"""Pinned full loops: each generator, fitted for a few dozen steps on a tiny zoo and sampled with a
fixed seed, makes the same networks (as diffusers' ``test_full_loop_no_noise`` pins a scheduler).

Each test pins the sum and the mean absolute value of the generated tensors of four samples. The
loop is seeded end to end (zoo, fit, sampling) and runs on the CPU with one thread, so the numbers
depend on the code alone. A deliberate change to initialization, noise streams or data order
changes them and must update ``PINNED``: ``WEIGHTGEN_REPIN=1 .venv/bin/python -m pytest -q -s
tests/test_pinned_loops.py`` prints the new values (and skips the comparison).
"""
from __future__ import annotations

import os

import pytest
import torch

from conftest import build, parse, tiny_cfg
from weightgen.generators.base import member_metric
from weightgen.pipeline import fit_generator
from weightgen.zoo import Zoo

# (sum, mean absolute value) of the generated tensors; rtol 1e-4, atol 1e-6.
PINNED = {
    "pdiff": (4.125417918279709, 0.0823100657846832),
    "rpg": (4.570494390824024, 0.11366044181912033),
    "gpt": (-6.7088451186646125, 0.08277009024178801),
}

SAMPLES = 4

# p-diff's own setting: a BatchNorm CNN, then only the head keeps training (90 generated values).
PDIFF = tiny_cfg(
    net={"name": "cnn", "channels": [4, 8], "batchnorm": True},
    zoo={"mode": "tail", "runs": 1, "checkpoints": 12, "every": 1, "tail": ["head.*"]},
    tokenizer={"include": ["head.*"], "token_size": "flat"},
    generator={"method": "pdiff", "fold_rate": 3, "kernel_size": 3, "enc_channels": [2, 2], "dec_channels": [2, 8],
               "denoiser_channels": [8, 16], "ae_steps": 30, "diffusion_steps": 30, "batch_size": 8,
               "diffusion": {"timesteps": 20}},
)
# Whole digits MLPs (64 -> 8 -> 10) from 3 seeded runs, 2 checkpoints each.
RPG = tiny_cfg(
    zoo={"mode": "seeds", "runs": 3, "checkpoints": 2, "every": 2},
    tokenizer={"token_size": 16},
    generator={"method": "rpg", "d_model": 16, "layers": 1, "unet_channels": [4, 8], "kernel_size": 3, "steps": 30,
               "batch_size": 2, "tokens_per_step": 5, "diffusion": {"timesteps": 20}},
)
# G.pt's trajectories: 3 runs, 4 checkpoints each from the initialization to the end.
GPT = tiny_cfg(
    zoo={"mode": "trajectory", "runs": 3, "checkpoints": 4},
    tokenizer={"token_size": 16},
    generator={"method": "gpt", "d_model": 16, "layers": 1, "heads": 2, "steps": 30, "batch_size": 4, "ema": None,
               "diffusion": {"timesteps": 20, "prediction": "sample"}},
)
CONFIGS = {"pdiff": PDIFF, "rpg": RPG, "gpt": GPT}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: a reduction then adds in one fixed order on any machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gpt_prompt(zoo: Zoo, metric: str) -> dict:
    """From the first training run's initialization to its last checkpoint's metric."""
    members = [m for m in zoo.members("train") if m.run == zoo.members("train")[0].run]
    first, last = members[0], members[-1]
    return {"start": zoo.load(first), "start_metric": member_metric(first, metric),
            "target_metric": member_metric(last, metric)}


def _loop(method: str, tmp_path) -> tuple[float, float]:
    """Build the zoo, fit the generator, sample ``SAMPLES`` networks with DDPM (noise at every step)."""
    data = CONFIGS[method]
    build(data, tmp_path / "zoo")
    with Zoo.open(tmp_path / "zoo") as zoo:
        gen, _ = fit_generator(parse(data), zoo, show_progress=False)
        condition = _gpt_prompt(zoo, gen.spec.metric) if method == "gpt" else None
        batch = next(gen.sample(SAMPLES, condition, seed=0, batch_size=SAMPLES, sampler="ddpm"))
    values = torch.cat([batch[name].double().flatten() for name in gen.tokenizer.names])
    return values.sum().item(), values.abs().mean().item()


@pytest.mark.parametrize("method", list(CONFIGS))
def test_full_loop_makes_the_pinned_networks(method, tmp_path):
    """The seeded zoo -> fit -> sample loop of ``method`` gives ``PINNED[method]``."""
    got = _loop(method, tmp_path)
    if os.environ.get("WEIGHTGEN_REPIN"):
        print(f'\n    "{method}": ({got[0]!r}, {got[1]!r}),')
        pytest.skip(f"WEIGHTGEN_REPIN: {method} gives {got}")
    assert got == pytest.approx(PINNED[method], rel=1e-4, abs=1e-6), (
        f"{method}: (sum, mean |value|) {got} instead of {PINNED[method]}; if the change is deliberate, "
        "re-pin: WEIGHTGEN_REPIN=1 .venv/bin/python -m pytest -q -s tests/test_pinned_loops.py")
