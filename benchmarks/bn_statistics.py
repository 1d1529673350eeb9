"""Which generated BatchNorm statistic costs a generated CNN its accuracy (issue 4).

    python benchmarks/bn_statistics.py [--only NAME ...] [--samples 50]

For RPG generators fitted by benchmarks/rpg_whole.py on the 20-seed digits CNN (every tensor generated,
BatchNorm running statistics included): the mean test accuracy of the same sampled networks (seed 0,
DDIM 50) with their statistics as generated, with both recomputed on the training inputs
(``evaluate.recalibrate_bn``), with only the running means recomputed and with only the running
variances recomputed; and, per BatchNorm, the median relative gap between each generated statistic and the one
recomputed for the same network. The zoo's own checkpoints, their statistics recomputed the same way, show
what recomputing alone changes. Writes benchmarks/results/bn_statistics/ and a section of docs/benchmarks/bn_statistics.md.
"""
from __future__ import annotations

import argparse

import torch

from common import command, fitted_generators, fmt, keep_earlier, machine, row_commands, write_json, write_section
from weightgen.evaluate.batched import evaluate_states
from weightgen.evaluate.recalibrate import recalibrate_bn
from weightgen.pipeline import train_stack, zoo_task
from weightgen.zoo import Zoo

# name -> (run folder under benchmarks/work/runs, zoo folder under benchmarks/work/zoos)
GENERATORS = {f"cnn-rpg+x0+ema-cos-warm, 4000 steps, fit seed {s}":
              (f"bench-whole-cnn-rpg-x0-ema-cos-warm-{'cpu-ema' if s == 0 else f'fs{s}'}", "rpg-whole-cnn")
              for s in range(4)}
STATISTICS = ("running_mean", "running_var")


def mean_accuracy(net, stacked, task) -> float:
    return float(evaluate_states(net, stacked, task, "test").accuracy.nanmean())


def with_recomputed(made: dict, recomputed: dict, which: tuple[str, ...]) -> dict:
    return {k: recomputed[k] if k.endswith(which) else v for k, v in made.items()}


def judge(gen, zoo: Zoo, samples: int) -> dict:
    task, net = zoo_task(zoo), zoo.build_net()
    x_train = task.split("train")[0]
    parts = list(gen.sample(samples, None, 0, 100, "ddim", 50))
    made = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    recomputed = recalibrate_bn(net, x_train, made)
    zoo_states = train_stack(zoo)
    gaps = {}
    for k in made:
        if k.endswith(STATISTICS):
            gap = (made[k] - recomputed[k]).abs() / recomputed[k].abs().clamp_min(1e-3)
            gaps[k] = float(gap.median())
    return {"samples": samples,
            "generated": mean_accuracy(net, made, task),
            "recomputed": mean_accuracy(net, recomputed, task),
            "means_recomputed": mean_accuracy(net, with_recomputed(made, recomputed, ("running_mean",)), task),
            "variances_recomputed": mean_accuracy(net, with_recomputed(made, recomputed, ("running_var",)), task),
            "zoo_stored": mean_accuracy(net, zoo_states, task),
            "zoo_recomputed": mean_accuracy(net, recalibrate_bn(net, x_train, zoo_states), task),
            "median_relative_gap": gaps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", choices=list(GENERATORS))
    ap.add_argument("--samples", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name, run, zoo_dir, gen in fitted_generators(GENERATORS, args.only):
        with Zoo.open(zoo_dir) as zoo:
            row = {"name": name, "run": run, **judge(gen, zoo, args.samples), "command": command(), "machine": machine()}
        rows.append(row)
        print(f"== {name}: generated {fmt(row['generated'])}, recomputed {fmt(row['recomputed'])}, means only "
              f"{fmt(row['means_recomputed'])}, variances only {fmt(row['variances_recomputed'])}", flush=True)
    rows = keep_earlier("bn_statistics", rows, key=lambda r: r["name"])
    rows.sort(key=lambda r: r["name"])
    write_json("bn_statistics", {"benchmark": "bn_statistics", "results": rows})
    bns = sorted({k.rsplit(".", 1)[0] for r in rows for k in r["median_relative_gap"]})
    head = ("| generator | samples | generated statistics | both recomputed | means recomputed | variances recomputed | "
            + " | ".join(f"{b}: mean / var gap" for b in bns) + " | zoo: stored / recomputed |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        g = r["median_relative_gap"]
        lines.append(f"| {r['name']} | {r['samples']} | {fmt(r['generated'])} | {fmt(r['recomputed'])} | "
                     f"{fmt(r['means_recomputed'])} | {fmt(r['variances_recomputed'])} | "
                     + " | ".join(f"{fmt(g.get(b + '.running_mean'), '.2f')} / {fmt(g.get(b + '.running_var'), '.2f')}"
                                  for b in bns)
                     + f" | {fmt(r['zoo_stored'])} / {fmt(r['zoo_recomputed'])} |")
    write_section("bn_statistics", f"""## Which generated BatchNorm statistic costs the accuracy (issue 4)

Commands, and the rows each made:
{row_commands(rows)}

The 20-seed digits CNN of benchmarks/rpg_whole.py (every tensor generated, BatchNorm statistics included), RPG
generators fitted there. The same sampled networks (seed 0, DDIM 50), mean test accuracy with their BatchNorm
statistics as generated, with both recomputed on the training inputs (`evaluate.recalibrate_bn`), with only the
running means recomputed, with only the running variances recomputed; per BatchNorm, the median relative gap
|generated - recomputed| / |recomputed| of each statistic; the zoo's own checkpoints with their stored and recomputed
statistics (what recomputing alone changes).

{chr(10).join(lines)}
""")
    print("wrote benchmarks/results/bn_statistics/default.json")


if __name__ == "__main__":
    main()
