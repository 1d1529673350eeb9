"""How much of a training run's update its initialization decides, and how much its data order.

    python benchmarks/update_determinism.py [--inits 6]

G.pt learns theta' from theta (and two metrics). Where a run's checkpoints are set by where it
started, that is a regression; where the order of the minibatches decides them, theta' given theta
is a broad distribution, and a model that answers its mean makes an average of networks. For each
zoo recipe of benchmarks/gpt_prompt.py, ``--inits`` initializations are trained twice, with two data
orders, and at each kept step the distance between the two runs is divided by the distance the
first one moved from the initialization (0: the init decides all; about 1.4 for two unrelated
updates of the same size). Also the gap in test loss between the two.

What a generator that answers a mean, or falls short, would make (second table): at each kept step, the test
loss of the mean of the two runs (what an x0 model that answers the mean of the data orders makes), of
theta_0 + f (theta_a - theta_0) for f in ``SHORT`` (an update followed part of the way), and of theta_a plus
Gaussian noise of ``NOISE`` times the update's norm (an update missed by as much in a random direction:
the 12,000-step CNN G.pt keeps 28% of the squared update error, ``denoiser_error``, a relative norm of 0.53).
How far the update is from the first gradient (third table): the cosine between the update theta_a - theta_0
at each kept step and minus the gradient of the training loss (the whole training split) at theta_0. Near 1,
training follows its first gradient and the update is read off the initialization almost linearly; near 0,
where a run ends depends on the initialization through the whole path, which is what G.pt must learn.
Writes benchmarks/results/update_determinism/ and a section of docs/benchmarks/update_determinism.md.
"""
from __future__ import annotations

import argparse
import copy
import statistics
from collections import defaultdict

import torch

from common import command, made_on, machine, write_json, write_section
from gpt_prompt import NETS
from weightgen.config import TrainSpec
from weightgen.nets import build_net
from weightgen.tasks import get_task
from weightgen.zoo.train import Schedule, score, train_member

STEPS = [21, 48, 133, 260, 340, 430, 510]  # checkpoints of the quadratic 510-step zoo
SHORT = (0.5, 0.75, 0.9)
NOISE = (0.25, 0.5)


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten() for v in state.values()])


def test_loss(net: torch.nn.Module, task, state: dict[str, torch.Tensor]) -> float:
    net.load_state_dict(state)
    return score(net, task, torch.device("cpu"))["test_loss"]


def made(net, task, start: dict, a: dict, b: dict, gen: torch.Generator) -> dict[str, float]:
    """Test loss of the networks a mean-answering or short generator would make at one step (module docstring)."""
    out = {"mean of 2 runs": test_loss(net, task, {k: (a[k] + b[k]) / 2 for k in a})}
    for f in SHORT:
        out[f"{f:g} of the update"] = test_loss(net, task, {k: start[k] + f * (a[k] - start[k]) for k in a})
    norm = float((flat(a) - flat(start)).norm())
    for r in NOISE:
        noise = {k: torch.randn(v.shape, generator=gen) for k, v in a.items()}
        scale = r * norm / float(flat(noise).norm())
        out[f"noise {r:g} x update"] = test_loss(net, task, {k: a[k] + scale * noise[k] for k in a})
    return out


def first_gradient(net: torch.nn.Module, task) -> torch.Tensor:
    """Minus the gradient of the training loss at the net's current weights, flattened in state_dict order."""
    net.zero_grad()
    task.loss(net(task.x_train), task.y_train).backward()
    grads = dict(net.named_parameters())
    return -torch.cat([grads[k].grad.flatten() if k in grads else torch.zeros(v.numel())
                       for k, v in net.state_dict().items()])


def measure(net_cfg: dict, recipe: dict, task_cfg: dict, inits: int) -> dict:
    task = get_task(**task_cfg)
    kwargs = {k: v for k, v in net_cfg.items() if k != "name"}
    spec = TrainSpec(**recipe)
    ratio = {s: [] for s in STEPS}
    loss_gap = {s: [] for s in STEPS}
    own = {s: [] for s in STEPS}
    alignment = {s: [] for s in STEPS}
    networks = {s: defaultdict(list) for s in STEPS}
    gen = torch.Generator().manual_seed(0)
    for i in range(inits):
        net = build_net(net_cfg["name"], task.input_shape, task.num_classes, seed=100 + i, **kwargs)
        start_state = copy.deepcopy(net.state_dict())
        start = flat(start_state)
        descent = first_gradient(copy.deepcopy(net), task)
        a, b = ({step: (state, metrics["test_loss"])
                 for step, state, metrics in train_member(copy.deepcopy(net), task, spec, Schedule(max(STEPS), STEPS), seed)}
                for seed in (1000 + i, 2000 + i))
        for s in STEPS:
            ratio[s].append(float((flat(a[s][0]) - flat(b[s][0])).norm() / (flat(a[s][0]) - start).norm()))
            loss_gap[s].append(abs(a[s][1] - b[s][1]))
            alignment[s].append(float(torch.nn.functional.cosine_similarity(flat(a[s][0]) - start, descent, dim=0)))
            own[s].append((a[s][1] + b[s][1]) / 2)
            for name, value in made(net, task, start_state, a[s][0], b[s][0], gen).items():
                networks[s][name].append(value)
    return {"ratio": {s: statistics.fmean(v) for s, v in ratio.items()},
            "loss_gap": {s: statistics.fmean(v) for s, v in loss_gap.items()},
            "own_loss": {s: statistics.fmean(v) for s, v in own.items()},
            "first_gradient_cosine": {s: statistics.fmean(v) for s, v in alignment.items()},
            "first_gradient_cosine_range": {s: [min(v), max(v)] for s, v in alignment.items()},
            "made_loss": {s: {name: statistics.fmean(v) for name, v in got.items()} for s, got in networks.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--inits", type=int, default=6)
    args = ap.parse_args()
    rows = []
    for name, (net_cfg, recipe, task_cfg) in NETS.items():
        got = measure(net_cfg, recipe, task_cfg, args.inits)
        rows.append({"zoo": name, "net": net_cfg, "recipe": recipe, "task": task_cfg, **got})
        print(f"== {name}: " + ", ".join(f"step {s} {got['ratio'][s]:.2f}" for s in STEPS), flush=True)
    payload = {"benchmark": "update_determinism", "command": command(), "machine": machine(), "inits": args.inits,
               "steps": STEPS, "results": rows}
    write_json("update_determinism", payload)
    lines = ["| zoo recipe | " + " | ".join(f"step {s}" for s in STEPS) + " |", "|---|" + "---|" * len(STEPS)]
    for r in rows:
        lines.append(f"| {r['zoo']} ({r['recipe']['optimizer']}, lr {r['recipe']['lr']}) | "
                     + " | ".join(f"{r['ratio'][s]:.2f} ({r['loss_gap'][s]:.2f})" for s in STEPS) + " |")
    made_lines = ["| zoo recipe | network | " + " | ".join(f"step {s}" for s in STEPS) + " |",
                  "|---|---|" + "---|" * len(STEPS)]
    for r in rows:
        made_lines.append(f"| {r['zoo']} | the runs' own | " + " | ".join(f"{r['own_loss'][s]:.3f}" for s in STEPS) + " |")
        for name in r["made_loss"][STEPS[0]]:
            made_lines.append(f"| {r['zoo']} | {name} | " + " | ".join(f"{r['made_loss'][s][name]:.3f}" for s in STEPS) + " |")
    cos_lines = ["| zoo recipe | " + " | ".join(f"step {s}" for s in STEPS) + " |", "|---|" + "---|" * len(STEPS)]
    for r in rows:
        cos_lines.append(f"| {r['zoo']} | " + " | ".join(
            f"{r['first_gradient_cosine'][s]:.2f} ({r['first_gradient_cosine_range'][s][0]:.2f}-{r['first_gradient_cosine_range'][s][1]:.2f})"
            for s in STEPS) + " |")
    write_section("update_determinism", f"""## How much of a run its initialization decides (issue 5)

Command: {made_on(payload)}.
The zoo recipes of benchmarks/gpt_prompt.py (digits, batch 64). {args.inits} initializations, each trained twice
with two data orders: at each step, |theta_a - theta_b| / |theta_a - theta_0|, the share of the update the data
order decides (0: the initialization decides everything; about 1.4: two unrelated updates), and in brackets
the mean gap in test loss between the two runs.

{chr(10).join(lines)}

Test loss of the networks a generator that answers a mean, or falls short, would make (mean over the
initializations): the two runs' own; the mean of the two runs' weights; theta_0 plus a share of the update;
theta_a plus Gaussian noise of a share of the update's norm.

{chr(10).join(made_lines)}

Cosine between the update theta_a - theta_0 and minus the training loss's gradient at theta_0 (mean over the
initializations, in brackets the lowest and highest): how nearly each recipe's run follows its first gradient.

{chr(10).join(cos_lines)}
""")
    print("wrote benchmarks/results/update_determinism/default.json", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
