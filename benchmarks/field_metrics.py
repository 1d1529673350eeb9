"""What MMD, COV and 1-NNA read for shape-fields-3d when the "generated" set is drawn from the data itself.

    python benchmarks/field_metrics.py [--per-half 100] [--points 256] [--count 3000] [--note TEXT]

The 3D targets (1-NNA within 10 points of 50%, COV within 5 points of the held-out reference's) are
read against a reference: the metrics of held-out shapes, which come from the data's own distribution.
This benchmark measures that anchor on the exact shapes (no fitting, no marching cubes): a family of
``2 * per_half`` shapes drawn from one seed is split into two halves, and the second half is judged
against the first as a generator's samples would be (Chamfer distance on ``points`` surface points per
shape). Two rows bound it from below: the first half judged against itself (an exact copy: 1-NNA 0%)
and one shape repeated (a collapsed generator: COV 1 / per_half). It also times ``make_shapes(count)``.
Writes benchmarks/results/field_metrics/default.json and docs/benchmarks/field_metrics.md.
"""
from __future__ import annotations

import argparse
import time

import torch

from common import command, machine, write_json, write_section
from weightgen.evaluate.generative import generative_metrics
from weightgen.fields.shapes import make_shapes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-half", type=int, default=100, help="shapes in each half")
    p.add_argument("--points", type=int, default=256, help="surface points per shape the Chamfer distance uses")
    p.add_argument("--count", type=int, default=3000, help="shapes make_shapes is timed on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="", help="a sentence for the page, e.g. that the machine was shared")
    args = p.parse_args()

    t0 = time.perf_counter()
    make_shapes(args.count, seed=args.seed)
    make_seconds = time.perf_counter() - t0

    fam = make_shapes(2 * args.per_half, seed=args.seed + 1, surface=args.points, num_uniform=64, num_near=64)
    # the classes alternate (labels = i % 5), so both halves hold every class in equal shares
    ref, held = fam.surface[0::2], fam.surface[1::2]
    rows = []
    for what, gen in (("held-out half (the ideal)", held), ("exact copy of the reference", ref.clone()),
                      ("one shape repeated (collapsed)", held[:1].expand(len(held), -1, -1).contiguous())):
        t0 = time.perf_counter()
        m = generative_metrics(gen, ref, distance="chamfer")
        rows.append({"generated": what, **m, "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)

    payload = {"command": command(), "machine": machine(), "per_half": args.per_half, "points": args.points,
               "count": args.count, "note": args.note, "make_shapes_seconds": make_seconds, "rows": rows}
    write_json("field_metrics", payload)
    lines = [
        f"Reference: {args.per_half} shapes of shape-fields-3d; Chamfer distance (PointFlow's: both means of "
        f"squared nearest distances, summed) on {args.points} surface points per shape.",
        "",
        "| generated set | MMD | COV | 1-NNA | 1-NNA gen / ref | seconds |",
        "|---|---|---|---|---|---|",
        *(f"| {r['generated']} | {r['mmd']:.4f} | {r['cov']:.1%} | {r['1nna']:.1%} | "
          f"{r['1nna_gen']:.1%} / {r['1nna_ref']:.1%} | {r['seconds']:.1f} |" for r in rows),
        "",
        f"`make_shapes({args.count})` (occupancy at 4,096 points and 2,048 surface points per shape): "
        f"{make_seconds:.1f} s.",
        "",
        f"Machine: {payload['machine']['cpu']}, {payload['machine']['torch_threads']} torch threads, "
        f"{payload['machine']['date']}. Command: `{payload['command']}`. {args.note}".rstrip(),
    ]
    write_section("field_metrics", "\n".join(lines))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
