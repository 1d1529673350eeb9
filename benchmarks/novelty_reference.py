"""What the novelty test says of networks SGD itself makes (the novelty target, calibrated).

    python benchmarks/novelty_reference.py [--only cnn vit mlp]

The whole-network target asks generated networks for novelty beyond the noise baseline: lower max
IoU with the training checkpoints than noise-added originals at the same accuracy. Whether a network
drawn from the zoo's own distribution passes that test is not obvious, so this benchmark measures it.
Each seeds zoo of the whole-network benchmarks (``rpg_whole``'s CNN and ViT, ``rpg_ablation``'s MLP)
holds 10 runs more than its 20 training runs, trained with the same recipe from seeds no generator
sees (``zoo.heldout``). Their checkpoints are judged exactly as a generator's samples are (same
evaluator, noise levels and number of noise-added models). The zoos are the benchmarks' own (same
folders), so every RPG or p-diff report on them carries this reference too (group ``heldout``).
Writes its JSON under benchmarks/results/ and its section of docs/benchmarks/novelty_reference.md.
"""
from __future__ import annotations

import copy
import time

import torch

from common import ROOT, WORK, command, made_on, fmt, machine, more_novel_than_noise, settings_args, summarize, write_json, write_section
from rpg_ablation import ZOO_DIR as MLP_ZOO_DIR
from rpg_ablation import config as ablation_config
from rpg_whole import SEEDS_ZOO, TOKENS, ZOOS
from weightgen.config import parse_config
from weightgen.evaluate import judge
from weightgen.evaluate.judging import novelty_note
from weightgen.pipeline import heldout_stack, train_stack, zoo_task
from weightgen.tokens.tokenizer import Tokenizer
from weightgen.zoo import Zoo, build_zoo


def settings() -> list[dict]:
    """(name, zoo folder, config) of each zoo: the benchmarks' own configs, unchanged."""
    out = [{"name": net, "zoo": WORK / "zoos" / f"rpg-whole-{net}", "what": f"digits {net} (rpg_whole)",
            "config": {"name": f"reference-{net}", "seed": 0, "task": {"name": "digits"}, **z, "zoo": SEEDS_ZOO,
                       "tokenizer": TOKENS, "evaluate": {"n_noise": 50}}} for net, z in ZOOS.items()]
    mlp = ablation_config("reference", {}, 64)
    out.append({"name": "mlp", "zoo": MLP_ZOO_DIR, "what": "digits MLP [32] (rpg_ablation)",
                "config": {k: v for k, v in mlp.items() if k not in ("generator", "sample")}})
    return out


def judge_heldout(s: dict) -> dict:
    """One zoo's row: its held-out runs judged as a generator's samples are."""
    cfg = parse_config(copy.deepcopy(s["config"]), s["name"])
    t0 = time.perf_counter()
    build_zoo(cfg, s["zoo"], show_progress=False)
    built = time.perf_counter() - t0
    with Zoo.open(s["zoo"]) as zoo:
        names = Tokenizer.from_spec(zoo, cfg.tokenizer).names
        held = heldout_stack(zoo)
        if held is None:
            raise SystemExit(f"{s['zoo']} has no held-out runs: its config must set zoo.heldout")
        train = train_stack(zoo)
        report = judge(zoo.build_net(), zoo_task(zoo), train, held, names, WORK / "runs" / f"reference-{s['name']}",
                       sigmas=cfg.evaluate.sigmas, n_noise=cfg.evaluate.n_noise, seed=cfg.seed,
                       title=f"{s['what']}: held-out runs judged as samples")
        runs = {split: len({m.run for m in zoo.members(split)}) for split in ("train", "heldout")}
    report.update(timing={"zoo_build_seconds": built}, fit=None)
    row = summarize(s["name"], report)
    row.update(what=s["what"], runs=runs, checkpoints_per_run=cfg.zoo.checkpoints,
               heldout_accuracy=report["groups"]["generated"]["accuracy"],
               novelty_note=novelty_note(report["groups"], head="novelty at equal accuracy: held-out", who="held-out runs"),
               more_novel_than_noise=more_novel_than_noise(row))
    return row


def main() -> None:
    args = settings_args(__doc__)
    rows, started = [], time.time()
    for s in settings():
        if args.only and s["name"] not in args.only:
            continue
        print(f"== {s['name']}", flush=True)
        rows.append(judge_heldout(s))
        r = rows[-1]
        print(f"   held-out {fmt(r['generated']['mean'])} at max IoU {fmt(r['generated']['max_iou_mean'], '.3f')}; "
              f"more novel than noise: {r['more_novel_than_noise']}", flush=True)
    payload = {"benchmark": "novelty_reference", "command": command(), "machine": machine(),
               "seconds": time.time() - started, "results": rows}
    written = write_json("novelty_reference", payload)
    lines = ["| zoo | params | runs (train / held out) x checkpoints | original best / mean / median | held-out best / mean / median "
             "| weight avg | noise σ=0.003 / 0.01 / 0.03 mean acc (max IoU) | max IoU orig / held-out | nearest dist orig / held-out "
             "| held-out more novel than noise? |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, h, n = r["original"], r["generated"], r["noise"]
        noise = " / ".join(f"{fmt(n[s]['mean'])} ({fmt(n[s]['max_iou_mean'], '.3f')})" for s in ("0.003", "0.01", "0.03"))
        lines.append(
            f"| {r['what']} | {r['generated_params']} | {r['runs']['train']} / {r['runs']['heldout']} x {r['checkpoints_per_run']} "
            f"| {fmt(o['best'])} / {fmt(o['mean'])} / {fmt(o['median'])} | {fmt(h['best'])} / {fmt(h['mean'])} / {fmt(h['median'])} "
            f"| {fmt(r['weight_average'])} | {noise} | {fmt(o['max_iou_mean'], '.3f')} / {fmt(h['max_iou_mean'], '.3f')} "
            f"| {fmt(o['nearest_distance_mean'], '.3g')} / {fmt(h['nearest_distance_mean'], '.3g')} "
            f"| {'yes' if r['more_novel_than_noise'] else 'no'} |")
    notes = "\n".join(f"- **{r['name']}**: {r['novelty_note']}" for r in rows)
    write_section("novelty_reference", f"""## The novelty test applied to SGD's own new networks

Command: {made_on(payload)}.
Each seeds zoo of the whole-network benchmarks trains 10 runs beyond its 20 training runs, with the same recipe
from seeds 20-29, and holds them out: no generator is fitted on them. Their checkpoints (the same last 5 of
each run) are judged here exactly as a generator's samples are: accuracy on the digits test split, max IoU
of wrong predictions and L2 distance to the nearest of the 100 training checkpoints, against 50 noise-added
originals per σ. A held-out run is what an ideal generator of the zoo's distribution would draw: a network
the zoo does not hold. Where it fails the test, the test asks more than novelty from the zoo's distribution.

{chr(10).join(lines)}

The evaluator's novelty notes:

{notes}
""")
    print(f"wrote {written.relative_to(ROOT)} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
