"""How long the 1,797-field digit zoo takes to build (target: under 5 minutes on 2 cores), with its mean PSNR,
and the other field net measured beside the default: `field-mlp` (the default) and `siren`, each fitting the
first ``--compare`` digits with the same steps.

    python benchmarks/field_zoo.py [--fields 1797] [--compare 256]

The zoo is the built-in config `fields-2d` with every digit (zoo.runs: 1797, none held out), built from
nothing in a fresh temporary directory with `weightgen.zoo.build_zoo` (fitting, writing every shard and the
manifest), then verified.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import ROOT, command, made_on, machine, write_json, write_section
from weightgen.config import load_config
from weightgen.fields import fit_fields, get_family
from weightgen.zoo import Zoo, build_zoo

TARGET_SECONDS = 300
# The comparison's recipes: the same 100 Adam steps of 256 coordinates; each net at its own learning rate
# (SIREN's sines diverge at field-mlp's 0.02).
NETS = {"field-mlp": {"lr": 0.02, "kwargs": {}}, "siren": {"lr": 0.002, "kwargs": {}}}


def build(fields: int) -> dict:
    cfg = load_config(ROOT / "weightgen" / "configs" / "fields-2d.yaml")
    cfg = cfg.model_copy(update={"zoo": cfg.zoo.model_copy(update={"runs": fields, "heldout": 0})})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_zoo(cfg, Path(tmp) / "zoo", show_progress=False)
        seconds = time.perf_counter() - start
        with Zoo.open(Path(tmp) / "zoo") as zoo:
            members = zoo.members()
            problems = zoo.verify()
    psnr = sorted(m.metrics["train_psnr"] for m in members)
    row = {"fields": len(members), "seconds": seconds, "verified": not problems, "net": cfg.net.name,
           "train": cfg.train.model_dump(), "psnr_mean": sum(psnr) / len(psnr), "psnr_min": psnr[0],
           "psnr_median": psnr[len(psnr) // 2]}
    print(f"{len(members)} fields in {seconds:.1f} s, mean PSNR {row['psnr_mean']:.2f} dB", flush=True)
    return row


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
    ap.add_argument("--note", default="", help="a sentence on the conditions (e.g. a shared machine)")
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
