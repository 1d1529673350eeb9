"""Quality against sampling steps, for each sampler: is DDPM's 1,000 steps needed, or do DDIM and
DPM-Solver++ make networks as good in a few dozen?

    python benchmarks/samplers.py [--only pdiff rpg] [--n 100] [--reuse]

On the default demo's zoo (weightgen/configs/demo.yaml: a BatchNorm CNN on digits, its last BatchNorm
and head, 200 checkpoints), each generator is fitted once (p-diff: the demo's own; RPG: a small one),
then 100 networks are sampled with every sampler and step count below and judged by the demo's report
(`pipeline.evaluate_samples`). For each: the generated best / mean / median accuracy, the report's
verdicts (best at least the originals' best; mean beats the weight average; at lower max IoU than
noise-added originals of the same accuracy), the sampling time, and how many networks are generated in
the time SGD trains one (the zoo's optimizer seconds per run). Target: 100x with the verdicts of DDPM
1,000. Writes benchmarks/results/samplers/ and docs/benchmarks/samplers.md.
"""
from __future__ import annotations

import argparse
import time

import torch
import yaml

from common import WORK, command, fmt, keep_earlier, machine, row_commands, write_json, write_section
from weightgen.cli import builtin_config_path
from weightgen.config import parse_config
from weightgen.generators import load_generator
from weightgen.pipeline import evaluate_samples, fit_generator, sgd_seconds_per_member, timed
from weightgen.zoo import Zoo, build_zoo

SETTINGS = [("ddpm", 1000), ("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddim", 100),
            ("dpm", 10), ("dpm", 20), ("dpm", 25), ("dpm", 50)]
# The generators compared: the demo's p-diff as it ships, and a small RPG on the same zoo.
GENERATORS = {
    "pdiff": None,
    "rpg": {"method": "rpg", "d_model": 64, "layers": 1, "unet_channels": [8, 16], "kernel_size": 3,
            "steps": 3000, "batch_size": 64, "tokens_per_step": 4, "lr": 1e-3, "ema": 0.999, "ema_warmup": True},
}
# RPG cuts the demo's values into tokens of 64 (p-diff: the whole 394 as one); the same normalization.
TOKEN_SIZE = {"rpg": 64}


class cpu_clock:
    """Within the block, ``time.perf_counter`` reads this process's CPU time: the zoo's optimizer
    seconds and the sampling seconds become CPU seconds of one thread, which other jobs sharing the
    machine do not inflate as they inflate wall time."""

    def __enter__(self):
        self.before, time.perf_counter = time.perf_counter, time.process_time

    def __exit__(self, *exc):
        time.perf_counter = self.before


def verdicts(report: dict) -> dict:
    """The report's three verdicts as booleans, read from its notes."""
    notes = report["notes"]
    return {"best_at_least_original": any(n.startswith("generated best ") and " >= " in n for n in notes),
            "beats_weight_average": any(" beats the weight average" in n for n in notes),
            "more_novel_than_noise": any("sit at LOWER max IoU" in n for n in notes if n.startswith("novelty"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", choices=list(GENERATORS))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--reuse", action="store_true", help="reuse generators fitted by an earlier run")
    ap.add_argument("--settings", nargs="*", help="sampler:steps pairs (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    demo = yaml.safe_load(builtin_config_path("demo").read_text())
    settings = [(s.split(":")[0], int(s.split(":")[1])) for s in args.settings] if args.settings else SETTINGS
    zoo_dir = WORK / "zoos" / "samplers-demo-cpu"
    t0 = time.time()
    with cpu_clock():  # the run's train_seconds in CPU seconds (zoo/train.py reads time.perf_counter)
        build_zoo(parse_config(demo, "demo"), zoo_dir, show_progress=False)
    zoo = Zoo.open(zoo_dir)
    sgd = sgd_seconds_per_member(zoo)
    rows, started, stamp = [], time.time(), machine()  # one machine record for every row of this invocation
    print(f"zoo ready in {time.time() - t0:.0f} s; SGD {sgd:.2f} s per run", flush=True)
    for name, spec in GENERATORS.items():
        if args.only and name not in args.only:
            continue
        data = {**demo, "name": f"samplers-{name}", "generator": spec or demo["generator"],
                "tokenizer": {**demo["tokenizer"], "token_size": TOKEN_SIZE.get(name, demo["tokenizer"]["token_size"])}}
        cfg = parse_config(data, name)
        gen_dir = WORK / "runs" / f"samplers-{name}" / "generator"
        if args.reuse and (gen_dir / "generator.json").is_file():
            gen, fit_seconds = load_generator(gen_dir, "cpu"), None
        else:
            gen, stats = fit_generator(cfg, zoo, show_progress=False)
            gen.save(gen_dir)
            fit_seconds = stats["fit_seconds"]
        print(f"== {name} fitted ({fmt(fit_seconds, '.0f')} s)", flush=True)
        for sampler, steps in settings:
            clock: dict = {}
            with cpu_clock():
                batches = list(timed(gen.sample(args.n, None, 0, 100, sampler, steps), clock))
            report = evaluate_samples(zoo, iter(batches), gen.tokenizer.names, None, cfg, title=f"{name} {sampler} {steps}")
            g = report["groups"]["generated"]
            row = {"generator": name, "sampler": sampler, "steps": steps, "sample_seconds": clock["seconds"],
                   "models_per_sgd_member": args.n * sgd / clock["seconds"],
                   **{k: g[k] for k in ("best", "mean", "median", "n_nonfinite")}, **verdicts(report),
                   "original": {k: report["groups"]["original"][k] for k in ("best", "mean", "median")},
                   "fit_seconds": fit_seconds, "name": f"{name} {sampler} {steps}", "command": command(),
                   "machine": stamp}
            rows.append(row)
            print(f"   {sampler} {steps}: mean {fmt(g['mean'])} best {fmt(g['best'])} "
                  f"{row['models_per_sgd_member']:.0f}x {verdicts(report)}", flush=True)
    zoo.close()
    rows = keep_earlier("samplers", rows, key=lambda r: r["name"])
    payload = {"benchmark": "samplers", "command": command(), "machine": machine(), "n": args.n,
               "sgd_seconds_per_member": sgd, "seconds": time.time() - started, "results": rows,
               "note": ("the machine's 2 cores were shared by 6 agents; every time is CPU seconds of one thread "
                        "(SGD's optimizer steps and sampling alike), which the sharing inflates far less than wall time")}
    write_json("samplers", payload)
    render(payload)


def render(payload: dict) -> None:
    lines = ["| generator | sampler | steps | generated best / mean / median | best >= original | beats average "
             "| more novel than noise | non-finite | sampling CPU s | networks per SGD run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "no"}
    for r in payload["results"]:
        lines.append(f"| {r['generator']} | {r['sampler']} | {r['steps']} | {fmt(r['best'])} / {fmt(r['mean'])} / "
                     f"{fmt(r['median'])} | {yes[r['best_at_least_original']]} | {yes[r['beats_weight_average']]} | "
                     f"{yes[r['more_novel_than_noise']]} | {r['n_nonfinite']} | {r['sample_seconds']:.2f} | "
                     f"{r['models_per_sgd_member']:.0f}x |")
    o = payload["results"][0]["original"] if payload["results"] else {}
    write_section("samplers", f"""## Quality against sampling steps (issue 62)

Commands ({payload['note']}):

{row_commands(payload['results'])}

{payload['n']} networks per row (one batch) from the demo's zoo (originals best / mean / median {fmt(o.get('best'))} /
{fmt(o.get('mean'))} / {fmt(o.get('median'))}), judged by the demo's report; SGD trains one of its runs in
{payload['sgd_seconds_per_member']:.2f} CPU s of optimizer time. ddpm: ancestral; ddim: eta 0; dpm: diffusers'
DPMSolverMultistepScheduler (DPM-Solver++, order 2). The demo samples with dpm in 25 steps
(weightgen/configs/demo.yaml), chosen from the p-diff rows, where every setting keeps DDPM 1,000's verdicts.

{chr(10).join(lines)}
""")


if __name__ == "__main__":
    main()
