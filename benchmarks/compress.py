"""Sparse and quantized networks generated directly in their compressed form (issue 60).

    python benchmarks/compress.py [--net cnn|vit] [--only NAME ...] [--scale 1.0] [--reuse] [--page-only]

p-diff's whole-network setting on digits (``zoo.mode: tail`` with every parameter training on, K checkpoints;
per-parameter standardized tokens), for the dense zoo and for zoos pruned at 50, 80, 90 and 95% (global
magnitude, one mask shared by the zoo, fine-tuned) and quantized to int8 and int4. Each pruned zoo's generator
sees only the kept entries (``tokenizer.mask: shared``). Measured per setting: the judge's report (originals,
noise and average baselines projected into the compressed space, generated), generation time, values and
tokens, peak memory of sampling, file sizes; and dense generated networks pruned afterwards. ``sparse90-own``:
each checkpoint its own mask, the mask generated (``tokenizer.mask: generated``). Settings run by separate
invocations share one table; ``--page-only`` rewrites the page from the results file. Writes
benchmarks/results/compress/ and docs/benchmarks/compress.md; zoos and runs go to benchmarks/work/.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import time

import torch

from common import (ROOT, WORK, command, fmt, keep_earlier, machine, more_novel_than_noise, result_path,
                    row_commands, run_or_reuse, scaled_steps, settings_args, summarize, tagged, write_json,
                    write_section)
from weightgen.config import parse_config

ADAM = {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "epochs": 20}
NETS = {"cnn": {"name": "cnn"}, "vit": {"name": "vit"}}
CHECKPOINTS = 100
# p-diff's 'medium' folds for ~14k values (benchmarks/pdiff.py, cnn-whole), steps cut for a shared 2-core CPU.
GEN = {"method": "pdiff", "fold_rate": 5, "kernel_size": 5, "enc_channels": [4, 4, 4, 4],
       "dec_channels": [4, 32, 32, 8], "denoiser_channels": [16, 32, 64], "batch_size": 50, "ae_steps": 1500, "diffusion_steps": 1500}
SPARSITIES = (0.5, 0.8, 0.9, 0.95)
FINETUNE = 30
TIMED_SAMPLES = 20
TOKEN_SIZE = 64  # the token count a token-wise generator (RPG, G.pt) would see
SAMPLER = {"sampler": "ddim", "steps": 100}  # judged and timed samples (DDPM's 1000 steps do not fit a shared CPU)


def setting(net: str, name: str, compress: dict | None = None, mask: str = "none") -> dict:
    zoo = {"mode": "tail", "checkpoints": CHECKPOINTS, "every": 1, "tail": ["*"]}
    if compress:
        zoo["compress"] = compress
    cfg = {"name": f"bench-compress-{net}-{name}", "seed": 0, "task": {"name": "digits"}, "net": NETS[net],
           "train": ADAM, "zoo": zoo,
           "tokenizer": {"include": ["*"], "token_size": "flat", "normalize": "element", "mask": mask},
           "generator": copy.deepcopy(GEN), "sample": {"n": 100, **SAMPLER}, "evaluate": {"n_noise": 100}}
    return {"name": name, "config": cfg}


def settings(net: str) -> list[dict]:
    def sparse(s):
        return setting(net, f"sparse{round(s * 100)}", {"prune": {"sparsity": s, "mask": "shared",
                                                                  "finetune_steps": FINETUNE}}, "shared")

    # the settings the targets read first, so a run cut short still answers them
    own = setting(net, "sparse90-own", {"prune": {"sparsity": 0.9, "finetune_steps": FINETUNE}}, "generated")
    return [setting(net, "dense"), sparse(0.9), setting(net, "int8", {"quantize": {"bits": 8}}),
            setting(net, "int4", {"quantize": {"bits": 4}})] + [sparse(s) for s in SPARSITIES if s != 0.9] + [own]


PEAK = """
import os, sys, threading, time, torch
torch.set_num_threads(1)
from weightgen.generators import load_generator
gen = load_generator(sys.argv[1], "cpu")
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
before, peak, done = rss(), [0], threading.Event()
def watch():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
t = threading.Thread(target=watch); t.start()
list(gen.sample(int(sys.argv[2]), seed=0, batch_size=int(sys.argv[2]), sampler=sys.argv[3], steps=int(sys.argv[4])))
done.set(); t.join()
print(max(peak[0], rss()) - before)
"""


def sampling_cost(gen, gen_dir) -> dict:
    """Seconds for TIMED_SAMPLES networks (best of two, one thread) and the extra peak memory of sampling them
    (a fresh process: its peak RSS while sampling, less its peak once the generator is loaded)."""
    times = []
    for _ in range(2):
        t = time.perf_counter()
        list(gen.sample(TIMED_SAMPLES, seed=0, batch_size=TIMED_SAMPLES, sampler=SAMPLER["sampler"],
                        steps=SAMPLER["steps"]))
        times.append(time.perf_counter() - t)
    out = subprocess.run([sys.executable, "-c", PEAK, str(gen_dir), str(TIMED_SAMPLES), SAMPLER["sampler"],
                          str(SAMPLER["steps"])], capture_output=True,
                         text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                                   "PATH": "/usr/bin:/bin"})
    peak = int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
    return {"seconds": min(times), "samples": TIMED_SAMPLES, "peak_extra_bytes": peak}


RPG_SAMPLES, RPG_STEPS = 10, 20


def rpg_cost(cfg, zoo_dir) -> dict:
    """RPG's sampling time for RPG_SAMPLES networks (DDIM, RPG_STEPS steps, one thread) over the setting's tokens
    (64 values each, the setting's mask mode). Its weights are left as initialized: they do not change the cost."""
    from weightgen.generators import GENERATORS
    from weightgen.zoo import Zoo

    spec = parse_config({"tokenizer": {**cfg.tokenizer.model_dump(), "token_size": TOKEN_SIZE},
                         "generator": {"method": "rpg", "steps": 0}})
    with Zoo.open(zoo_dir) as zoo:
        gen = GENERATORS.get("rpg").from_zoo(spec.generator, zoo, spec.tokenizer, "cpu")
    t = time.perf_counter()
    list(gen.sample(RPG_SAMPLES, seed=0, batch_size=RPG_SAMPLES, sampler="ddim", steps=RPG_STEPS))
    return {"seconds": time.perf_counter() - t, "tokens": gen.tokenizer.num_tokens, "samples": RPG_SAMPLES,
            "steps": RPG_STEPS}


def prune_after(stacked: dict, names: list[str], sparsity: float) -> dict:
    """Dense networks (stacked) with a global magnitude threshold over ``names`` per network: pruned afterwards,
    without fine-tuning."""
    flat = torch.cat([stacked[n].flatten(1) for n in names], 1)
    k = flat.shape[1] - round(sparsity * flat.shape[1])
    threshold = flat.abs().topk(k, dim=1).values[:, -1:]
    out = dict(stacked)
    for n in names:
        t = stacked[n]
        out[n] = torch.where(t.abs() >= threshold.view(-1, *[1] * (t.dim() - 1)), t, torch.zeros_like(t))
    return out


def accuracy(zoo, stacked: dict) -> dict:
    from weightgen.evaluate.batched import Evaluator
    from weightgen.pipeline import zoo_task

    scores = Evaluator(zoo.build_net(), zoo_task(zoo), "test")(stacked)
    acc = scores.metrics["accuracy"]
    return {"mean": float(acc.nanmean()), "best": float(acc[~acc.isnan()].max()), "n": len(acc)}


def main() -> None:
    def extra(ap):
        ap.add_argument("--net", default="cnn", choices=sorted(NETS))
        ap.add_argument("--page-only", action="store_true", help="rewrite the page from the results file")
        ap.add_argument("--rpg-timing", action="store_true",
                        help="time p-diff's and RPG's sampling again for every setting in the results file, in one "
                             "pass, then rewrite the page")

    args = settings_args(__doc__, extra)
    torch.set_num_threads(1)
    from weightgen.compress import snap
    from weightgen.generators import load_generator
    from weightgen.tokens import Tokenizer
    from weightgen.zoo import Zoo

    name = tagged("compress", args.tag) if args.tag else "compress"
    if args.net != "cnn":
        name = tagged("compress", args.net + (f"-{args.tag}" if args.tag else ""))
    rows, started = [], time.time()
    if args.page_only or args.rpg_timing:
        data = json.loads(result_path(name).read_text())
        for row in data["results"] if args.rpg_timing else []:
            cfg = next(parse_config(s["config"], s["name"]) for s in settings(args.net) if s["name"] == row["name"])
            gen_dir = WORK / "runs" / (cfg.name + (f"-{args.tag}" if args.tag else "")) / "generator"
            # p-diff timed again in this pass, so every setting's time comes from one stretch of the machine's load
            row["sampling"] = sampling_cost(load_generator(gen_dir, "cpu"), gen_dir)
            row["rpg_sampling"] = rpg_cost(cfg, WORK / "zoos" / cfg.name)
            print(f"   {row['name']}: RPG {row['rpg_sampling']}", flush=True)
            data["timing_command"], data["timing_machine"] = command(), machine()
            write_json(name, data)
        data["targets"] = targets(data["results"])
        write_json(name, data)
        write_section(name, page(data))
        return
    for s in settings(args.net):
        if args.only and s["name"] not in args.only:
            continue
        cfg = parse_config(scaled_steps(s["config"], args.scale), s["name"])
        zoo_dir, run_dir = WORK / "zoos" / cfg.name, WORK / "runs" / (cfg.name + (f"-{args.tag}" if args.tag else ""))
        print(f"== {s['name']}", flush=True)
        report = run_or_reuse(cfg, zoo_dir, run_dir, args.reuse)
        row = summarize(s["name"], report)
        row["command"] = command()
        row["more_novel_than_noise"] = more_novel_than_noise(row)
        gen = load_generator(run_dir / "generator", "cpu")
        with Zoo.open(zoo_dir) as zoo:
            record = zoo.meta("compress") or {}
            members = zoo.members(None)
            dense_bytes = sum((zoo.root / "shards" / m.shard).stat().st_size for m in members) / len(members)
            row["zoo"] = {"density": record.get("density", 1.0), "masks_shared": record.get("masks_shared"),
                          "bits": record.get("bits"), "checkpoint_bytes_dense": dense_bytes,
                          "checkpoint_bytes_compact": record["compact_bytes"] / len(members) if record else dense_bytes}
            row["tokens"] = {"values": gen.tokenizer.num_params, "pdiff_width": gen.tokenizer.width,
                             f"tokens_at_{TOKEN_SIZE}": Tokenizer.fit_zoo(zoo, token_size=TOKEN_SIZE,
                                                                          mask=cfg.tokenizer.mask).num_tokens}
        row["sampling"] = sampling_cost(gen, run_dir / "generator")
        row["fit_seconds"] = report["timing"]["fit_seconds"]
        if s["name"] == "dense":  # dense generated networks, pruned afterwards and snapped afterwards
            with Zoo.open(zoo_dir) as zoo:
                samples = next(gen.sample(100, seed=0, batch_size=100, **SAMPLER))
                pruned = [n for n, v in samples.items() if n.endswith("weight") and v.dim() >= 3]
                row["pruned_after"] = {f"{round(p * 100)}": accuracy(zoo, prune_after(samples, pruned, p))
                                       for p in SPARSITIES}
                row["snapped_after"] = {f"int{b}": accuracy(zoo, {k: snap(v, b, lead=1) if k in pruned else v
                                                                  for k, v in samples.items()}) for b in (8, 4)}
        rows.append(row)
        print(f"   original mean {fmt(row['original']['mean'])}, generated mean {fmt(row['generated']['mean'])}, "
              f"values {row['tokens']['values']}, sampling {row['sampling']['seconds']:.2f} s", flush=True)
        write_json(name, payload(args, rows, started))  # after each setting: a long run keeps what it has
    data = payload(args, rows, started)
    data["targets"] = targets(rows)
    write_json(name, data)
    write_section(name, page(data))
    print(f"wrote benchmarks/results/compress/ and docs/benchmarks/compress.md ({time.time() - started:.0f} s)")


def payload(args, rows, started) -> dict:
    name = tagged("compress", args.net + (f"-{args.tag}" if args.tag else "")) if args.net != "cnn" else \
        (tagged("compress", args.tag) if args.tag else "compress")
    order = [s["name"] for s in settings(args.net)]
    rows = sorted(keep_earlier(name, rows, key=lambda r: r["name"], fill=("command", "machine")),
                  key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    return {"benchmark": "compress", "command": command(), "machine": machine(), "net": args.net, "scale": args.scale,
            "checkpoints": CHECKPOINTS, "finetune_steps": FINETUNE, "seconds": time.time() - started, "results": rows,
            "note": "the 2-core machine was shared by 6 agents while this ran: times are indicative"}


def targets(rows: list[dict]) -> dict:
    """The issue's targets, each with its numbers and a verdict (None where a setting was not run)."""
    by = {r["name"]: r for r in rows}
    out = {}
    s90, dense = by.get("sparse90"), by.get("dense")
    if s90:
        ratio = s90["generated"]["mean"] / s90["original"]["mean"]
        out["sparse90_accuracy_ge_99pct_of_pruned_originals"] = {"ratio": ratio, "reached": ratio >= 0.99}
        out["sparse90_more_novel_than_noise"] = {"reached": s90["more_novel_than_noise"]}
    if s90 and dense:
        speed = dense["sampling"]["seconds"] / s90["sampling"]["seconds"]
        tok = dense["tokens"][f"tokens_at_{TOKEN_SIZE}"] / s90["tokens"][f"tokens_at_{TOKEN_SIZE}"]
        values = dense["tokens"]["values"] / s90["tokens"]["values"]
        out["sparse90_5x_faster"] = {"speedup": speed, "reached": speed >= 5}
        if "rpg_sampling" in dense and "rpg_sampling" in s90:
            rpg = dense["rpg_sampling"]["seconds"] / s90["rpg_sampling"]["seconds"]
            out["sparse90_5x_faster_rpg"] = {"speedup": rpg, "reached": rpg >= 5}
        out["sparse90_5x_fewer_tokens"] = {"tokens_ratio": tok, "values_ratio": values, "reached": tok >= 5}
    for b, tol in ((8, 0.005), (4, 0.01)):
        r = by.get(f"int{b}")
        if r:
            gap = r["original"]["mean"] - r["generated"]["mean"]
            out[f"int{b}_within_{tol * 100:g}pt"] = {"gap": gap, "reached": gap <= tol}
    return out


def page(data: dict) -> str:
    rows = data["results"]
    by = {r["name"]: r for r in rows}
    dense = by.get("dense")
    lines = ["| setting | density | original mean | weight avg | generated mean / best | gen max IoU | noise σ=0.01 / "
             "0.05 mean | more novel than noise | values | tokens@64 | sample s (20) | peak MB | bytes/ckpt dense → "
             "compact | fit s | RPG sample s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n, z, t = r["noise"], r["zoo"], r["tokens"]
        peak = r["sampling"]["peak_extra_bytes"]
        peak = f"{peak / 2**20:.0f}" if peak is not None else "–"
        rpg = f"{r['rpg_sampling']['seconds']:.1f}" if "rpg_sampling" in r else "–"
        lines.append(
            f"| {r['name']} | {z['density']:.3f} | {fmt(r['original']['mean'])} | {fmt(r['weight_average'])} | "
            f"{fmt(r['generated']['mean'])} / "
            f"{fmt(r['generated']['best'])} | {fmt(r['generated']['max_iou_mean'], '.3f')} | "
            f"{fmt(n.get('0.01', {}).get('mean'))} / {fmt(n.get('0.05', {}).get('mean'))} | "
            f"{'yes' if r['more_novel_than_noise'] else 'no'} | {t['values']} | {t[f'tokens_at_{TOKEN_SIZE}']} | "
            f"{r['sampling']['seconds']:.2f} | {peak} | {z['checkpoint_bytes_dense']:.0f} → "
            f"{z['checkpoint_bytes_compact']:.0f} | {r['fit_seconds']:.0f} | {rpg} |")
    after = ""
    if dense and "pruned_after" in dense:
        cells = []
        for s in SPARSITIES:
            key = f"{round(s * 100)}"
            own = by.get(f"sparse{key}")
            cells.append(f"| {key}% | {fmt(own['original']['mean']) if own else '–'} | "
                         f"{fmt(own['generated']['mean']) if own else '–'} | "
                         f"{fmt(dense['pruned_after'][key]['mean'])} |")
        after = ("\n\nAccuracy against sparsity (test mean of 100 networks; 'dense generated, pruned after': the dense "
                 "generator's samples, global magnitude pruning, no fine-tuning):\n\n| sparsity | pruned originals "
                 "| generated sparse | dense generated, pruned after |\n|---|---|---|---|\n" + "\n".join(cells))
        q = [f"| int{b} | {fmt(by[f'int{b}']['original']['mean']) if f'int{b}' in by else '–'} | "
             f"{fmt(by[f'int{b}']['generated']['mean']) if f'int{b}' in by else '–'} | "
             f"{fmt(dense['snapped_after'][f'int{b}']['mean'])} |" for b in (8, 4)]
        after += ("\n\nQuantized (test mean): originals quantized per channel, a generator fitted on that zoo with "
                  "samples snapped to their grid, and the dense generator's samples snapped afterwards:\n\n"
                  "| bits | quantized originals | generated (fit on the quantized zoo) | dense generated, snapped |\n"
                  "|---|---|---|---|\n" + "\n".join(q))
    def numbers(v: dict) -> str:
        return json.dumps({a: round(b, 4) if isinstance(b, float) else b for a, b in v.items() if a != "reached"})

    verdicts = "\n".join(f"| {k} | {numbers(v)} | {'reached' if v['reached'] else 'missed'} |"
                         for k, v in data.get("targets", {}).items())
    timing = f" (`{data['timing_command']}`, {data['timing_machine']['date']})" if "timing_command" in data else ""
    return f"""## Sparse and quantized networks generated directly: digits {data['net']} (issue 60)

Commands (the machine each generator was fitted on):

{row_commands(rows)}

{data['note'][0].upper() + data['note'][1:]}.
p-diff over the whole network (zoo mode tail with every parameter training, {data['checkpoints']} checkpoints;
element-wise standardized flat tokens; generator steps scaled by {data['scale']}). Pruned zoos: global magnitude
pruning of every conv and linear weight with one mask shared by the zoo, each checkpoint fine-tuned
{data['finetune_steps']} steps under it; their generator sees the kept entries only (`tokenizer.mask: shared`).
The noise and average baselines are projected into the compressed space (re-masked, re-snapped) before judging.
Sampling times and RPG's were measured in one pass{timing}. Samples: DDIM, 100 steps. Sampling time: {TIMED_SAMPLES} networks, one thread, best of two; peak MB: the extra
resident memory of sampling them.
'values': entries generated (p-diff's flat token width); 'tokens@64': what a token-wise generator (RPG, G.pt) sees.
'RPG sample s': RPG (defaults, as initialized: the cost does not depend on the fit) sampling {RPG_SAMPLES} networks
over those tokens, DDIM {RPG_STEPS} steps, one thread.

| target | numbers | verdict |
|---|---|---|
{verdicts}

{chr(10).join(lines)}{after}
"""


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
