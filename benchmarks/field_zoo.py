"""How long the 1,797-field digit zoo takes to build (target: under 5 minutes on 2 cores), with its mean PSNR,
and the other field net measured beside the default: `field-mlp` (the default) and `siren`, each fitting the
first ``--compare`` digits with the same steps. With ``--shapes N`` the same for 3D (tag ``3d``): a zoo of
N shapes of the built-in config `fields-3d` (target: 1,000 or more in under 15 minutes on 2 cores), its fit
quality as IoU against the exact shapes, and the two nets on the first ``--compare`` shapes.

    python benchmarks/field_zoo.py [--fields 1797] [--compare 256]
    python benchmarks/field_zoo.py --shapes 1000 [--compare 48]

The zoo is the built-in config `fields-2d` with every digit (zoo.runs: 1797, none held out), or `fields-3d`
with ``--shapes`` shapes, built from nothing in a fresh temporary directory with `weightgen.zoo.build_zoo`
(fitting, writing every shard and the manifest), then verified. Beside the wall time it records the
process's CPU time: on a machine other jobs share, CPU time / 2 bounds what 2 free cores would take.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT, command, made_on, machine, result_path, write_json, write_section
from weightgen.config import load_config
from weightgen.evaluate.batched import stack_states
from weightgen.fields import fit_fields, get_family
from weightgen.fields.shapes import fit_iou
from weightgen.nets import build_net
from weightgen.zoo import Zoo, build_zoo

TARGET_SECONDS = 300
TARGET_SECONDS_3D = 900
# The comparison's recipes: the same 100 Adam steps of 256 coordinates; each net at its own learning rate
# (SIREN's sines diverge at field-mlp's 0.02).
NETS = {"field-mlp": {"lr": 0.02, "kwargs": {}}, "siren": {"lr": 0.002, "kwargs": {}}}
# In 3D: fields-3d's 300 steps of 1,024 points; field-mlp with the config's frequency scale.
NETS_3D = {"field-mlp": {"lr": 0.01, "kwargs": {"scale": 1.0}}, "siren": {"lr": 0.002, "kwargs": {}}}


def build(fields: int, shapes: int = 0) -> dict:
    if shapes:
        cfg = load_config(ROOT / "weightgen" / "configs" / "fields-3d.yaml")
        cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"count": shapes}),
                                     "zoo": cfg.zoo.model_copy(update={"runs": shapes, "heldout": 0})})
    else:
        cfg = load_config(ROOT / "weightgen" / "configs" / "fields-2d.yaml")
        cfg = cfg.model_copy(update={"zoo": cfg.zoo.model_copy(update={"runs": fields, "heldout": 0})})
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        build_zoo(cfg, Path(tmp) / "zoo", show_progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        with Zoo.open(Path(tmp) / "zoo") as zoo:
            members = zoo.members()
            problems = zoo.verify()
            if shapes:
                stacked = stack_states([zoo.load(m) for m in members])
                iou = fit_iou(zoo.build_net(), stacked, [m.condition["item"] for m in members], shapes,
                              cfg.task.kwargs.get("seed", 0))
    psnr = sorted(m.metrics["train_psnr"] for m in members)
    row = {"fields": len(members), "seconds": seconds, "cpu_seconds": cpu, "verified": not problems,
           "net": cfg.net.name, "net_kwargs": cfg.net.kwargs, "task": cfg.task.model_dump(),
           "train": cfg.train.model_dump(), "psnr_mean": sum(psnr) / len(psnr), "psnr_min": psnr[0],
           "psnr_median": psnr[len(psnr) // 2]}
    if shapes:
        row.update(iou_mean=float(iou.mean()), iou_median=float(iou.median()), iou_min=float(iou.min()))
    print(f"{len(members)} fields in {seconds:.1f} s ({cpu:.1f} s CPU), mean PSNR {row['psnr_mean']:.2f} dB"
          + (f", IoU {row['iou_mean']:.3f}" if shapes else ""), flush=True)
    return row


def compare_3d(n: int) -> list[dict]:
    """field-mlp against siren on the first ``n`` shapes of `fields-3d`, with its steps and grid."""
    cfg = load_config(ROOT / "weightgen" / "configs" / "fields-3d.yaml")
    kw = {**cfg.task.kwargs, "count": n}
    family = get_family(cfg.task.name, **kw)
    steps = cfg.train.epochs * -(-family.coords.shape[0] // cfg.train.batch_size)
    rows = []
    for name, recipe in NETS_3D.items():
        start = time.perf_counter()
        stacked, psnr = fit_fields(name, family.coords, family.values, [0] * n, steps, lr=recipe["lr"],
                                   batch_coords=cfg.train.batch_size, **recipe["kwargs"])
        seconds = time.perf_counter() - start
        iou = fit_iou(build_net(name, (3,), 1, **recipe["kwargs"]), stacked, range(n), n, kw.get("seed", 0))
        params = sum(v[0].numel() for v in stacked.values())
        rows.append({"net": name, "fields": n, "params": params, "lr": recipe["lr"], "steps": steps,
                     "seconds": seconds, "psnr_mean": float(psnr.mean()), "psnr_min": float(psnr.min()),
                     "iou_mean": float(iou.mean()), "iou_min": float(iou.min())})
        print(f"{name}: {n} shapes in {seconds:.1f} s, IoU {float(iou.mean()):.3f}", flush=True)
    return rows


def compare(n: int) -> list[dict]:
    family = get_family("digit-fields")
    rows = []
    for name, recipe in NETS.items():
        start = time.perf_counter()
        stacked, psnr = fit_fields(name, family.coords, family.values[:n], [0] * n, 100, lr=recipe["lr"],
                                   batch_coords=256, **recipe["kwargs"])
        seconds = time.perf_counter() - start
        params = sum(v[0].numel() for v in stacked.values())
        rows.append({"net": name, "fields": n, "params": params, "lr": recipe["lr"], "seconds": seconds,
                     "psnr_mean": float(psnr.mean()), "psnr_min": float(psnr.min())})
        print(f"{name}: {n} fields in {seconds:.1f} s, mean PSNR {float(psnr.mean()):.2f} dB", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fields", type=int, default=1797, help="digits in the timed zoo (all: 1797)")
    ap.add_argument("--compare", type=int, default=256, help="digits each net fits in the comparison (0: none)")
    ap.add_argument("--shapes", type=int, default=0, help="time a 3D zoo of this many shapes instead (tag 3d)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for --shapes (1 on a shared machine)")
    ap.add_argument("--note", default="", help="a sentence on the conditions (e.g. a shared machine)")
    ap.add_argument("--page-only", action="store_true", help="rewrite the 3D page section from its saved results")
    args = ap.parse_args()
    if args.page_only:
        result = json.loads(result_path("field_zoo-3d").read_text())
        result.setdefault("cpu_target_met", result["zoo"]["cpu_seconds"] < result["target_seconds"]
                          if result["zoo"]["fields"] >= 1000 else None)
        write_json("field_zoo-3d", result)
        write_section("field_zoo-3d", page_3d(result))
        return
    if args.shapes:
        torch.set_num_threads(args.threads)  # on a shared machine one thread per process thrashes least
        return main_3d(args)
    zoo = build(args.fields)
    rows = compare(args.compare) if args.compare else []
    result = {"benchmark": "field_zoo", "command": command(), "machine": machine(), "note": args.note, "zoo": zoo,
              "compare": rows, "target_seconds": TARGET_SECONDS,
              "target_met": zoo["seconds"] < TARGET_SECONDS if zoo["fields"] == 1797 else None}
    write_json("field_zoo", result)
    target = {True: "met", False: "MISSED", None: "not the full zoo"}[result["target_met"]]
    lines = ["| net | fields | parameters | lr | time | mean PSNR | min PSNR |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['net']} | {r['fields']} | {r['params']} | {r['lr']} | {r['seconds']:.1f} s | "
                     f"{r['psnr_mean']:.2f} dB | {r['psnr_min']:.2f} dB |")
    write_section("field_zoo", f"""## Field zoo build time

Command: {made_on(result)}.{(' ' + args.note) if args.note else ''}
The built-in config `fields-2d` with all {zoo['fields']} digits (32 x 32 fields, `{zoo['net']}`, 100 Adam steps of
256 coordinates, all fitted at once in chunks of 256), built from nothing in a fresh directory and verified
({'every shard verified' if zoo['verified'] else 'VERIFY FAILED'}).

| fields | wall time | mean PSNR | median PSNR | min PSNR | target (< {TARGET_SECONDS} s) |
|---|---|---|---|---|---|
| {zoo['fields']} | {zoo['seconds']:.1f} s | {zoo['psnr_mean']:.2f} dB | {zoo['psnr_median']:.2f} dB | {zoo['psnr_min']:.2f} dB | {target} |

The two field nets on the first {args.compare} digits, 100 steps each, from one shared initialization:

{chr(10).join(lines)}
""")


def main_3d(args) -> None:
    zoo = build(0, args.shapes)
    rows = compare_3d(args.compare) if args.compare else []
    full = zoo["fields"] >= 1000
    result = {"benchmark": "field_zoo", "command": command(), "machine": machine(), "note": args.note, "zoo": zoo,
              "compare": rows, "target_seconds": TARGET_SECONDS_3D, "threads": args.threads,
              "target_met": zoo["seconds"] < TARGET_SECONDS_3D if full else None,
              # CPU time over the threads bounds what that many free cores take, whatever else ran
              "cpu_target_met": zoo["cpu_seconds"] / args.threads < TARGET_SECONDS_3D if full else None}
    write_json("field_zoo-3d", result)
    write_section("field_zoo-3d", page_3d(result))


def page_3d(result: dict) -> str:
    """The 3D section of docs/benchmarks/field_zoo.md from its results."""
    zoo, rows, note = result["zoo"], result["compare"], result["note"]
    word = {True: "met", False: "MISSED", None: "under 1,000 shapes"}
    lines = ["| net | shapes | parameters | lr | steps | time | mean IoU | min IoU |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['net']} | {r['fields']} | {r['params']} | {r['lr']} | {r['steps']} | {r['seconds']:.1f} s | "
                     f"{r['iou_mean']:.3f} | {r['iou_min']:.3f} |")
    t, threads = zoo["task"], result.get("threads", 1)
    return f"""## 3D field zoo build time

Command: {made_on(result)}.{(' ' + note) if note else ''}
The built-in config `fields-3d` with {zoo['fields']} shapes (soft occupancy, band {t.get('band')}, on the
{t.get('resolution')}^3 grid; `{zoo['net']}` with {zoo['net_kwargs']}; {zoo['train']['epochs']} passes of
{zoo['train']['batch_size']} points a step; all fitted at once in chunks of 256), built from nothing in a fresh
directory and verified ({'every shard verified' if zoo['verified'] else 'VERIFY FAILED'}). IoU: each field's
inside (value > 0.5) against its exact shape at 20,000 uniform points, off the fitting grid. The build runs
{threads} torch thread(s), so its CPU time over {threads} bounds what as many free cores take; the wall time
includes waiting for other jobs.

| shapes | wall time | CPU time ({threads} thread(s)) | mean IoU | median IoU | min IoU | mean PSNR | target (< {result['target_seconds']} s): wall / CPU |
|---|---|---|---|---|---|---|---|
| {zoo['fields']} | {zoo['seconds']:.1f} s | {zoo['cpu_seconds']:.1f} s | {zoo['iou_mean']:.3f} | {zoo['iou_median']:.3f} | {zoo['iou_min']:.3f} | {zoo['psnr_mean']:.2f} dB | {word[result['target_met']]} / {word[result.get('cpu_target_met')]} |

""" + (f"""
The two field nets on the first {rows[0]['fields']} shapes, the same steps, from one shared initialization:

{chr(10).join(lines)}
""" if rows else "")

if __name__ == "__main__":
    main()
