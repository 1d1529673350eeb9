"""Is a G.pt's miss in prompt alignment the sampler's or the model's?

    python benchmarks/gpt_sampler.py [--only NAME ...] [--starts 6] [--table-only]

Two checks on a G.pt fitted by benchmarks/gpt_prompt.py. Samplers: the same 20 prompts from each of
the first ``--starts`` held-out initializations, made with DDIM 50 steps (what gpt_prompt judges with),
DDIM 200 and DDPM 1,000; the prompt R² and the mean bias (achieved minus prompted) of each. If more
steps do not move them, the sampler is not what misses. One step from clean: real checkpoints of those
held-out runs whose metric lies in the middle of the zoo's range, noised to timestep t and denoised
once given their run's initialization, their metric as the target; the metric of what comes out
against theirs. If a nearly clean input loses nothing, the last sampling steps do not blur a network.
Writes benchmarks/results/gpt_sampler/ and a section of docs/benchmarks/gpt_sampler.md.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from common import (command, fitted_generators, gpt_pair_tokens, keep_earlier, machine, row_commands, write_json,
                    write_section)
from gpt_prompt import PROMPTS, heldout_runs, prompt_targets, r_squared, values
from weightgen.diagnostics import predict_x0
from weightgen.evaluate import Evaluator
from weightgen.generators.base import member_metric
from weightgen.pipeline import zoo_task
from weightgen.zoo import Zoo

# name -> (run folder under benchmarks/work/runs, zoo folder under benchmarks/work/zoos)
GENERATORS = {
    f"gpt-units test error, balanced, {steps} steps": (
        f"bench-prompt-gpt-units-test_error-{steps}-quadratic-uniform_gap-cosine-balance10", "gpt-mlp-200-quadratic")
    for steps in (6000, 12000, 24000)
}
# The CNN [16, 32] (1,000 runs, test loss), whose prompt R² stays negative: the same two checks.
GENERATORS["gpt-graph cnn test loss, 12000 steps"] = (
    "bench-prompt-gpt-graph-test_loss-12000-1000-runs-cnn-quadratic-uniform_gap-cosine", "gpt-cnn-1000-quadratic")
SAMPLERS = [("ddim", 50), ("ddim", 200), ("ddpm", 1000)]
TIMESTEPS = [5, 20, 50, 100, 200]
# "The middle of the range": where the prompts from an initialization fall and the zoo has few checkpoints.
MIDDLE = (0.2, 0.8)
CHECKPOINTS = 40


def sampler_rows(gen, zoo: Zoo, ev, runs: list[list], metric: str) -> list[dict]:
    best = min(member_metric(m, metric) for m in zoo.members("train"))
    rows = []
    for sampler, steps in SAMPLERS:
        prompted, achieved = [], []
        for members in runs:
            start, value = zoo.load(members[0]), member_metric(members[0], metric)
            targets = prompt_targets(best, value)
            condition = {"start": start, "start_metric": value, "target_metric": targets}
            nets = next(gen.sample(PROMPTS, condition, seed=0, batch_size=PROMPTS, sampler=sampler, steps=steps))
            prompted += targets
            achieved += values(ev(nets), metric)
        rows.append({"sampler": sampler, "steps": steps, "r2": r_squared(prompted, achieved),
                     "bias": statistics.fmean(a - p for p, a in zip(prompted, achieved))})
        print(f"   {sampler} {steps}: R² {rows[-1]['r2']:.3f}, bias {rows[-1]['bias']:+.4f}", flush=True)
    return rows


@torch.no_grad()
def one_step_rows(gen, zoo: Zoo, ev, runs: list[list], metric: str) -> dict:
    """Real middle-of-the-range checkpoints, noised to t and denoised once: their metric after."""
    picked = [(ms[0], m) for ms in runs for m in ms if MIDDLE[0] < member_metric(m, metric) < MIDDLE[1]][:CHECKPOINTS]
    if not picked:
        return {"checkpoints": 0, "true": None, "denoised": {}}
    net = gen.sampling_module(gen.net)
    net.eval()
    start, x0 = gpt_pair_tokens(gen, zoo, [s for s, _ in picked], [m for _, m in picked])
    sm, tm = (torch.tensor([member_metric(m, metric) for m in ms], device=gen.device)
              for ms in zip(*picked))
    true = statistics.fmean(values(ev(gen.to_states(x0)), metric))
    out = {}
    for t in TIMESTEPS:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t)).to(gen.device)
        tt = torch.full((len(x0),), t, device=gen.device, dtype=torch.long)
        x_t = gen.diffusion.train_scheduler.add_noise(x0, noise, tt)
        guess = predict_x0(gen.diffusion, net(x_t, tt, start, sm, tm), x_t, tt)
        out[t] = statistics.fmean(values(ev(gen.to_states(guess)), metric))
    print(f"   {len(picked)} middle checkpoints, {metric} {true:.4f}; denoised once: "
          + ", ".join(f"t={t} {v:.4f}" for t, v in out.items()), flush=True)
    return {"checkpoints": len(picked), "true": true, "denoised": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", choices=list(GENERATORS))
    ap.add_argument("--starts", type=int, default=6, help="held-out initializations prompted")
    ap.add_argument("--table-only", action="store_true",
                    help="measure nothing: write the table again from benchmarks/results/gpt_sampler/default.json")
    args = ap.parse_args()
    rows = []
    for name, run, zoo_dir, gen in ([] if args.table_only else fitted_generators(GENERATORS, args.only)):
        print(f"== {name}", flush=True)
        metric = gen.spec.metric
        with Zoo.open(zoo_dir) as zoo:
            ev = Evaluator(zoo.build_net(), zoo_task(zoo), metric.split("_")[0])
            runs = heldout_runs(zoo, args.starts)
            rows.append({"name": name, "run": run, "command": command(), "machine": machine(),
                         "metric": metric, "starts": len(runs),
                         "samplers": sampler_rows(gen, zoo, ev, runs, metric),
                         "one_step": one_step_rows(gen, zoo, ev, runs, metric)})
    # Generators judged by earlier invocations keep their rows, and their command and machine.
    rows = keep_earlier("gpt_sampler", rows, key=lambda r: r["name"], fill=("command", "machine"))
    for r in rows:  # JSON made the timesteps strings
        r["one_step"]["denoised"] = {int(t): v for t, v in r["one_step"]["denoised"].items()}
    rows.sort(key=lambda r: list(GENERATORS).index(r["name"]) if r["name"] in GENERATORS else len(GENERATORS))
    payload = {"benchmark": "gpt_sampler", "command": command(), "machine": machine(), "results": rows}
    write_json("gpt_sampler", payload)
    head = ("| generator | starts | " + " | ".join(f"{s} {n}: R², bias" for s, n in SAMPLERS)
            + " | middle checkpoints (true) | " + " | ".join(f"t = {t}" for t in TIMESTEPS) + " |")
    lines = [head, "|---|---|" + "---|" * (len(SAMPLERS) + 1 + len(TIMESTEPS))]
    for r in rows:
        one = r["one_step"]
        cells = [f"{s['r2']:.3f}, {s['bias']:+.4f}" for s in r["samplers"]]
        cells.append(f"{one['checkpoints']} ({one['true']:.4f})" if one["true"] is not None else "0")
        cells += [f"{one['denoised'][t]:.4f}" if t in one["denoised"] else "–" for t in TIMESTEPS]
        lines.append(f"| {r['name']} | {r['starts']} | " + " | ".join(cells) + " |")
    write_section("gpt_sampler", f"""## G.pt: the sampler or the model? (issue 5)

Commands, and the rows each made:
{row_commands(rows)}

Generators fitted by benchmarks/gpt_prompt.py. Samplers: {PROMPTS} prompts from each of the first held-out
initializations (the starts column), made by each sampler; prompt R² and mean bias (achieved minus prompted).
One step from clean: up to {CHECKPOINTS} checkpoints of those runs with a metric between {MIDDLE[0]} and {MIDDLE[1]},
noised to t and denoised once given their run's initialization and their own metric as the target; the mean
metric of what comes out, against theirs in brackets.

{chr(10).join(lines)}
""")
    print("wrote benchmarks/results/gpt_sampler/default.json", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
