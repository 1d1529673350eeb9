"""How well a fitted RPG or G.pt denoiser recovers a training checkpoint's tokens at each noise level.

    python benchmarks/denoiser_error.py [--only NAME ...] [--table-only]

RPG: for 64 training checkpoints of the generator's zoo, each token is noised to timestep t and
denoised once, given its prototype. G.pt: for 64 training runs, the last checkpoint (theta') is
noised and denoised once given the run's initialization (theta), its metric and theta''s
metric, the pair a prompt from an initialization asks for. The table gives the mean squared error of the clean
tokens the model implies (``weightgen.diagnostics.predict_x0``, whatever it predicts) against the
error of the input alone (x_t / sqrt(abar)). Tokens are standardized per tensor, so 1 is
the error of always answering the mean. Where the model's error is above the input's, the
last sampling steps blur what the first ones found: the reason for v prediction
(docs/results.md, "Unseen tasks" and "Prompted metrics"). Reads generators fitted by benchmarks/unseen_tasks.py and
benchmarks/gpt_prompt.py; writes benchmarks/results/denoiser_error/ and a section of docs/benchmarks/denoiser_error.md.
"""
from __future__ import annotations

import argparse
import random

import torch

from common import (command, fitted_generators, gpt_pair_tokens, keep_earlier, machine, row_commands, write_json,
                    write_section)
from weightgen.diagnostics import predict_x0
from weightgen.generators.base import member_metric
from weightgen.generators.gpt import training_runs
from weightgen.zoo import Zoo

# name -> (run folder under benchmarks/work/runs, zoo folder under benchmarks/work/zoos)
GENERATORS = {
    "unseen tasks, x0, 3000 steps": ("bench-unseen-all, no permutation state-pretrained-init-3000", "unseen-tasks-pretrained"),
    "unseen tasks, x0, 8000 steps": ("bench-unseen-all, no permutation state-pretrained-init-8000", "unseen-tasks-pretrained"),
    "unseen tasks, v, 3000 steps": ("bench-unseen-all, no permutation state, v prediction-pretrained-init-3000",
                                    "unseen-tasks-pretrained"),
    "unseen tasks, v, 8000 steps": ("bench-unseen-all, no permutation state, v prediction-pretrained-init-8000",
                                    "unseen-tasks-pretrained"),
}
# G.pt: (run folder, zoo folder), each judged on two kinds of pair (see GPT_PAIRS). The rows of
# "x0, posterior" (the removed `preconditioning: posterior`) stay as recorded; those fits no longer load.
for _steps in (1500, 6000):
    for _label, _suffix in (("x0", ""), ("v", "-v")):
        GENERATORS[f"G.pt test loss, {_label}, {_steps} steps"] = (
            f"bench-gpt-test_loss-{_steps}-uniform_gap-cosine{_suffix}", "gpt-mlp-200")
# The CNN [16, 32] (1,000 runs), whose prompt R² stays negative: is its model's miss at high noise?
GENERATORS["G.pt test loss, gpt-graph, cnn, 12000 steps"] = (
    "bench-prompt-gpt-graph-test_loss-12000-1000-runs-cnn-quadratic-uniform_gap-cosine", "gpt-cnn-1000-quadratic")
# ... and whether an edge that reads the product of its two units (`edge_input: bilinear`, ours) fits the CNN's
# update better than the sum of the first version, after the same short fit.
for _label, _method in (("gpt-graph", "gpt-graph"), ("gpt-graph, bilinear edges", "gpt-graph-bilinear")):
    GENERATORS[f"G.pt test loss, {_label}, cnn, 1000 steps"] = (
        f"bench-prompt-{_method}-test_loss-1000-1000-runs-cnn-quadratic-uniform_gap-cosine-emawarmup",
        "gpt-cnn-1000-quadratic")  # EMA warmed up: at 0.999 plain, 37% of a 1,000-step average is the initial weights
# Which checkpoints of a run make the pair: the initialization to the last (what a prompt from an
# initialization asks; a large update), and checkpoint 20 to 30 (a short step late in training).
GPT_PAIRS = {"init -> last": (0, -1), "checkpoint 20 -> 30": (20, 30)}
TIMESTEPS = [999, 700, 300, 100, 50, 20, 5]
MEMBERS = 64


def masked_mse(guess: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean squared error over the real values (``mask`` 1), padding left out."""
    return float(((guess - x0) ** 2 * mask).sum() / mask.sum())


def noised_errors(gen, x0: torch.Tensor, mask: torch.Tensor, denoise) -> dict[int, dict[str, float]]:
    """At each timestep: the error of the clean data ``denoise(x_t, t)`` implies, and of ``x_t`` alone."""
    out = {}
    for t in TIMESTEPS:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t)).to(gen.device)
        tt = torch.full((len(x0),), t, device=gen.device, dtype=torch.long)
        x_t = gen.diffusion.train_scheduler.add_noise(x0, noise, tt)
        model = predict_x0(gen.diffusion, denoise(x_t, tt), x_t, tt)
        a = gen.diffusion.train_scheduler.alphas_cumprod[t]
        out[t] = {"model": masked_mse(model, x0, mask), "input": masked_mse(x_t / a.sqrt(), x0, mask)}
    return out


@torch.no_grad()
def gpt_errors(gen, zoo: Zoo, first_at: int, last_at: int) -> dict[int, dict[str, float]]:
    """G.pt: checkpoint ``last_at`` of up to MEMBERS training runs, given checkpoint ``first_at``."""
    net = gen.sampling_module(gen.net)
    net.eval()
    tok, train = gen.tokenizer, zoo.members("train")
    chains = training_runs(train)
    runs = random.Random(0).sample(chains, min(MEMBERS, len(chains)))
    first, last = [train[idx[first_at]] for idx in runs], [train[idx[last_at]] for idx in runs]
    start, x0 = gpt_pair_tokens(gen, zoo, first, last)
    sm, tm = (torch.tensor([member_metric(m, gen.spec.metric) for m in ms], device=gen.device) for ms in (first, last))
    mask = tok.mask.to(gen.device).expand_as(x0).float()
    errs = noised_errors(gen, x0, mask, lambda x_t, tt: net(x_t, tt, start, sm, tm))
    return {"start_alone": masked_mse(start, x0, mask), **errs}


@torch.no_grad()
def errors(gen, zoo: Zoo) -> dict[int, dict[str, float]]:
    net = gen.sampling_module(gen.net)
    net.eval()
    tok = gen.tokenizer
    train = zoo.members("train")
    members = random.Random(0).sample(train, min(MEMBERS, len(train)))
    x0 = tok.tokenize_batch(zoo.load(m, tok.names) for m in members).to(gen.device)  # (B, T, W)
    b, t_count, w = x0.shape
    codes = gen.member_conditions(members)
    proto = net.prototypes(gen.state_index(members).to(gen.device), None,
                           codes.to(gen.device) if codes is not None else None)
    cond, flat = proto.reshape(b * t_count, -1), x0.reshape(b * t_count, 1, w)
    mask = tok.mask.to(gen.device).reshape(1, t_count, w).expand(b, -1, -1).reshape(b * t_count, 1, w).float()
    return noised_errors(gen, flat, mask, lambda x_t, tt: net.denoiser(x_t, tt, cond))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", choices=list(GENERATORS))
    ap.add_argument("--table-only", action="store_true",
                    help="measure nothing: write the table again from benchmarks/results/denoiser_error/default.json")
    args = ap.parse_args()
    rows = []
    for name, run, zoo_dir, gen in ([] if args.table_only else fitted_generators(GENERATORS, args.only)):
        with Zoo.open(zoo_dir) as zoo:
            measured = ({f"{name}, {kind}": gpt_errors(gen, zoo, *at) for kind, at in GPT_PAIRS.items()}
                        if gen.method == "gpt" else {name: errors(gen, zoo)})
        for label, errs in measured.items():
            start_alone = errs.pop("start_alone", None)  # G.pt: the error of answering theta itself
            rows.append({"name": label, "run": run, "command": command(), "machine": machine(),
                         "prediction": gen.spec.diffusion.prediction, "errors": errs, "start_alone": start_alone})
            print(f"== {label}: " + ", ".join(f"t={t} {e['model']:.4f} (input {e['input']:.4f})"
                                             for t, e in errs.items()), flush=True)
    # Generators measured by earlier invocations keep their rows, and their command and machine.
    rows = keep_earlier("denoiser_error", rows, key=lambda r: r["name"], fill=("command", "machine"))
    for r in rows:  # JSON keeps the timesteps of earlier rows as strings
        r["errors"] = {int(t): e for t, e in r["errors"].items()}
    payload = {"benchmark": "denoiser_error", "command": command(), "machine": machine(), "members": MEMBERS,
               "timesteps": TIMESTEPS, "results": rows}
    write_json("denoiser_error", payload)
    head = "| generator | prediction | " + " | ".join(f"t = {t}" for t in TIMESTEPS) + " |"
    lines = [head, "|---|---|" + "---|" * len(TIMESTEPS)]
    for r in rows:
        cells = []
        for t in TIMESTEPS:
            e = r["errors"][t]
            mark = " ✘" if e["model"] > e["input"] else ""
            cells.append(f"{e['model']:.4f} ({e['input']:.4f}){mark}")
        name = r["name"] + (f" (theta alone: {r['start_alone']:.4f})" if r.get("start_alone") is not None else "")
        lines.append(f"| {name} | {r['prediction']} | " + " | ".join(cells) + " |")
    write_section("denoiser_error", f"""## Denoiser error by noise level (RPG and G.pt)

Commands, and the rows each made:
{row_commands(rows)}

RPG: {MEMBERS} training checkpoints of each generator's zoo, every token noised to timestep t and denoised once.
G.pt: checkpoint j of {MEMBERS} training runs noised to t and denoised once given checkpoint i of the run and both
metrics, for (i, j) = (initialization, last), what a prompt from an initialization asks, and (20, 30). Mean
squared error of the clean tokens the model implies, and in brackets that of the input alone (x_t / sqrt(abar)).
Tokens are standardized per tensor (1 = always answering the mean). ✘: the model is worse than its input, so
sampling steps at that noise level blur the network.

{chr(10).join(lines)}
""")
    print("wrote benchmarks/results/denoiser_error/default.json", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
