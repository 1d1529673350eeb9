"""How far apart a seeds zoo keeps its checkpoints, and the ceiling that puts on a generator that makes
each run's mean (issue 4, the whole-network best target).

    python benchmarks/checkpoint_spacing.py [--nets vit cnn] [--spacings 17 8 4 2 1]

Fitted long enough, RPG on rpg_whole's seeds zoos makes about one network per permutation state, close to
that run's own weight average (docs/results.md, "Whole networks"). Its best is
then bounded by the best run average. On one build of the tiny ViT's zoo that ceiling (0.9833)
lay below the original best (0.9861). This asks, with nothing learned, whether the zoo's recipe sets the
ceiling. rpg_whole's zoo keeps the last 5 checkpoints of each run 17 steps
(one epoch) apart. This builds each net's zoo once more with every one of the last 69 steps kept (the same 30
seeded runs, the same training; rpg_whole's checkpoints are every 17th of these). For each spacing s it judges the
20 training runs' last 5 checkpoints s steps apart as the originals, and each run's average of those 5 as
the networks a per-run-mean generator would make. Closer checkpoints make a run's average nearer each of them
and the original best a maximum over less independent draws.
Writes benchmarks/results/checkpoint_spacing/ and a section of docs/benchmarks/checkpoint_spacing.md.
"""
from __future__ import annotations

import argparse
import time

import torch

from common import WORK, command, made_on, fmt, machine, write_json, write_section
from rpg_whole import SEEDS_ZOO, TOKENS, ZOOS
from weightgen.config import parse_config
from weightgen.evaluate import run_averages
from weightgen.evaluate.batched import Evaluator, stack_states
from weightgen.evaluate.novelty import max_iou
from weightgen.pipeline import zoo_task
from weightgen.tokens.tokenizer import Tokenizer
from weightgen.zoo import Zoo, build_zoo

KEPT = SEEDS_ZOO["checkpoints"]  # checkpoints per run in rpg_whole's zoo
WIDEST = SEEDS_ZOO["every"]  # rpg_whole's spacing: one epoch of the digits training split at batch 64
LAST = WIDEST * (KEPT - 1) + 1  # steps kept at the end of each run: every spacing up to WIDEST picks KEPT of them


def zoo_config(net: str) -> dict:
    """rpg_whole's zoo for ``net`` (its seed, runs, recipe), keeping every one of its last LAST steps."""
    return {"name": f"spacing-{net}", "seed": 0, "task": {"name": "digits"}, **ZOOS[net],
            "zoo": {**SEEDS_ZOO, "checkpoints": LAST, "every": 1}, "tokenizer": TOKENS}


def judge(net: str, spacings: list[int]) -> list[dict]:
    cfg = parse_config(zoo_config(net), f"spacing-{net}")
    path = WORK / "zoos" / f"checkpoint-spacing-{net}"
    t0 = time.time()
    build_zoo(cfg, path, show_progress=False)  # built once, resumed if interrupted, checked when present
    built = time.time() - t0
    rows = []
    with Zoo.open(path) as zoo:
        names = Tokenizer.from_spec(zoo, cfg.tokenizer).names
        members = zoo.members("train")
        last = max(m.step for m in members)
        ev = Evaluator(zoo.build_net(), zoo_task(zoo), "test")
        for s in spacings:
            steps = {last - s * k for k in range(KEPT)}
            chosen = sorted((m for m in members if m.step in steps), key=lambda m: (m.run, m.step))
            if len(chosen) != KEPT * len({m.run for m in members}):
                raise SystemExit(f"spacing {s}: the zoo at {path} lacks some of steps {sorted(steps)}")
            stacked = stack_states([zoo.load(m) for m in chosen])
            runs = [m.run for m in chosen]
            orig = ev(stacked)
            avg = ev(run_averages(stacked, names, runs))
            o_acc, a_acc = orig.accuracy, avg.accuracy
            best_run = int(torch.argmax(o_acc)) // KEPT  # runs come in blocks of KEPT, in run order, as the averages do
            rows.append({
                "net": net, "spacing": s, "steps": sorted(steps), "runs": len(set(runs)),
                "original": {"best": float(o_acc.max()), "mean": float(o_acc.mean()),
                             "max_iou_mean": float(max_iou(orig.wrong, orig.wrong, exclude_diagonal=True).mean())},
                "run_average": {"best": float(a_acc.max()), "mean": float(a_acc.mean()),
                                "max_iou_mean": float(max_iou(avg.wrong, orig.wrong).mean()),
                                "best_run_own": float(a_acc[best_run])},
                "ceiling_reaches_best": bool(a_acc.max() >= o_acc.max()),
                "zoo_seconds": built,
            })
            r = rows[-1]
            print(f"{net} spacing {s}: originals best/mean {fmt(r['original']['best'])} / {fmt(r['original']['mean'])}; "
                  f"run averages {fmt(r['run_average']['best'])} / {fmt(r['run_average']['mean'])}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nets", nargs="*", default=["vit", "cnn"], choices=sorted(ZOOS))
    ap.add_argument("--spacings", nargs="*", type=int, default=[17, 8, 4, 2, 1])
    args = ap.parse_args()
    if any(not 1 <= s <= WIDEST for s in args.spacings):
        ap.error(f"--spacings must lie in 1..{WIDEST} (the zoo keeps the last {LAST} steps)")
    rows = [r for net in args.nets for r in judge(net, args.spacings)]
    payload = {"benchmark": "checkpoint_spacing", "command": command(), "machine": machine(), "results": rows}
    write_json("checkpoint_spacing", payload)
    lines = [
        "## Checkpoint spacing and the per-run-average ceiling (issue 4)", "",
        f"Command: {made_on(payload)}.",
        "rpg_whole's seeds zoos (the same 30 seeded runs and recipes; 20 training runs judged), rebuilt keeping every one",
        f"of the last {LAST} steps; for each spacing the last {KEPT} checkpoints of each run that many steps",
        f"apart are the originals ({WIDEST}: rpg_whole's zoo), and each run's average of them (every tensor, BatchNorm",
        "statistics included, nothing recomputed) is what a generator making each run's mean would give. Nothing is learned.",
        "Ceiling: whether the best run average reaches the original best (issue 4's best target, for such a generator).", "",
        "| net | spacing (steps) | originals best / mean | max IoU among originals | run averages best / mean "
        "| run averages' max IoU to originals | best checkpoint's run: its average | ceiling reaches best |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o, a = r["original"], r["run_average"]
        lines.append(f"| {r['net']} | {r['spacing']} | {fmt(o['best'])} / {fmt(o['mean'])} | {fmt(o['max_iou_mean'], '.3f')} "
                     f"| {fmt(a['best'])} / {fmt(a['mean'])} | {fmt(a['max_iou_mean'], '.3f')} | {fmt(a['best_run_own'])} "
                     f"| {'✔' if r['ceiling_reaches_best'] else '✘'} |")
    write_section("checkpoint_spacing", "\n".join(lines))


if __name__ == "__main__":
    main()
