"""How well a fitted RPG denoiser recovers a training checkpoint's tokens at each noise level.

    python benchmarks/denoiser_error.py [--only NAME ...]

For 64 training checkpoints of the generator's zoo, each token is noised to timestep t and
denoised once, given its prototype; the table gives the mean squared error of the clean
tokens the model implies (``Diffusion.predict_x0``, whatever it predicts) against the
error of the input alone (x_t / sqrt(abar)). Tokens are standardized per tensor, so 1 is
the error of always answering the mean. Where the model's error is above the input's, the
last sampling steps blur what the first ones found: the reason for v prediction
(docs/results.md, unseen tasks). Reads generators fitted by benchmarks/unseen_tasks.py; writes benchmarks/results/denoiser_error.json and a section of docs/results.md.
"""
from __future__ import annotations

import argparse
import random

import torch

from common import WORK, command, machine, write_json, write_section
from weightgen.generators import load_generator
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
TIMESTEPS = [999, 700, 300, 100, 50, 20, 5]
MEMBERS = 64


@torch.no_grad()
def errors(gen, zoo: Zoo) -> dict[int, dict[str, float]]:
    net = gen.sampling_module(gen.net)
    net.eval()
    tok = gen.tokenizer
    train = zoo.members("train")
    members = random.Random(0).sample(train, min(MEMBERS, len(train)))
    x0 = tok.tokenize_batch(zoo.load(m, tok.names) for m in members).to(gen.device)  # (B, T, W)
    b, t_count, w = x0.shape
    codes = gen.member_codes(members)
    proto = net.prototypes(gen.state_index(members).to(gen.device), None,
                           codes.to(gen.device) if codes is not None else None)
    cond, flat = proto.reshape(b * t_count, -1), x0.reshape(b * t_count, 1, w)
    mask = tok.mask.to(gen.device).reshape(1, t_count, w).expand(b, -1, -1).reshape(b * t_count, 1, w).float()
    out = {}
    for t in TIMESTEPS:
        noise = torch.randn(flat.shape, generator=torch.Generator().manual_seed(t)).to(gen.device)
        tt = torch.full((len(flat),), t, device=gen.device, dtype=torch.long)
        x_t = gen.diffusion.train_scheduler.add_noise(flat, noise, tt)
        model = gen.diffusion.predict_x0(net.denoiser(x_t, tt, cond), x_t, tt)
        a = gen.diffusion.train_scheduler.alphas_cumprod[t]
        mse = lambda guess: float(((guess - flat) ** 2 * mask).sum() / mask.sum())  # noqa: E731
        out[t] = {"model": mse(model), "input": mse(x_t / a.sqrt())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", choices=list(GENERATORS))
    args = ap.parse_args()
    rows = []
    for name, (run, zoo_dir) in GENERATORS.items():
        if args.only and name not in args.only:
            continue
        path = WORK / "runs" / run / "generator"
        if not path.is_dir():
            print(f"== {name}: {path} not fitted yet, skipped", flush=True)
            continue
        gen = load_generator(path)
        with Zoo.open(WORK / "zoos" / zoo_dir) as zoo:
            rows.append({"name": name, "run": run, "prediction": gen.spec.diffusion.prediction,
                         "errors": errors(gen, zoo)})
        print(f"== {name}: " + ", ".join(f"t={t} {e['model']:.4f} (input {e['input']:.4f})"
                                        for t, e in rows[-1]["errors"].items()), flush=True)
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
        lines.append(f"| {r['name']} | {r['prediction']} | " + " | ".join(cells) + " |")
    m = payload["machine"]
    write_section("denoiser_error", f"""## Denoiser error by noise level (RPG)

Command: `{payload['command']}` on {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['date']}).
{MEMBERS} training checkpoints of each generator's zoo, every token noised to timestep t and denoised once: mean
squared error of the clean tokens the model implies, and in brackets that of the input alone (x_t / sqrt(abar)).
Tokens are standardized per tensor (1 = always answering the mean). ✘: the model is worse than its input, so
sampling steps at that noise level blur the network.

{chr(10).join(lines)}
""")
    print("wrote benchmarks/results/denoiser_error.json", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
