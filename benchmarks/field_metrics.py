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

    python benchmarks/field_metrics.py --speed 20 [--large 100] [--note TEXT]

times the Chamfer matrix instead (tag ``speed``): ``chamfer_matrix`` (KD-trees) against all pairwise
squared distances (``all_pairs_chamfer_matrix``, blocked matrix products, the definition) on two sets of
``--speed`` shapes with 2,048 surface points each, both a set against the other and a set against
itself, with the largest difference between them; then the KD-tree alone on sets of ``--large``.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from common import command, machine, result_path, write_json, write_section
from weightgen.evaluate.generative import chamfer_matrix, generative_metrics
from weightgen.fields.shapes import make_shapes


def all_pairs_chamfer_matrix(x: torch.Tensor, y: torch.Tensor, max_floats: int = 2**24) -> torch.Tensor:
    """The Chamfer matrix ``(A, B)`` by every pairwise squared distance (|a|^2 + |b|^2 - 2ab, float32),
    a block of ``x`` against all of ``y`` per matrix product: the reference the KD-trees are timed against."""
    (a, n, dim), (b, m, _) = x.shape, y.shape
    x, y = x.float(), y.float()
    xx, yy = (x * x).sum(-1), (y * y).sum(-1).reshape(1, -1)
    flat_y = y.reshape(-1, dim)
    block = max(1, max_floats // (n * b * m))
    out = torch.empty(a, b)
    for s in range(0, a, block):
        xs = x[s : s + block]
        d = torch.addmm(xx[s : s + block].reshape(-1, 1) + yy, xs.reshape(-1, dim), flat_y.T, alpha=-2.0)
        d = d.clamp_(min=0).view(len(xs), n, b, m)
        out[s : s + block] = d.min(3).values.mean(1) + d.min(1).values.mean(2)
    return out


def timed(fn, *args) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def speed(args) -> None:
    """The ``--speed`` mode of the module's docstring."""
    n = args.speed
    fam = make_shapes(2 * max(n, args.large), seed=args.seed + 2, num_uniform=8, num_near=8)
    x, y = fam.surface[:n], fam.surface[n:2 * n]
    rows = []
    for what, pair in (("set against another", (x, y)), ("set against itself", (x, x.clone()))):
        want, t_all = timed(all_pairs_chamfer_matrix, *pair)
        got, t_kd = timed(chamfer_matrix, pair[0], None if what.endswith("itself") else pair[1])
        off = ~torch.eye(n, dtype=torch.bool) if what.endswith("itself") else torch.ones(n, n, dtype=torch.bool)
        rel = float(((got - want).abs() / want.abs())[off].max())  # the zero diagonal has no relative error
        rows.append({"what": what, "n": n, "all_pairs_seconds": t_all, "kd_tree_seconds": t_kd,
                     "max_abs_diff": float((got - want).abs().max()), "max_rel_diff": rel})
        print(rows[-1], flush=True)
    m = args.large
    big_x, big_y = fam.surface[:m], fam.surface[m:2 * m]
    _, t_cross = timed(chamfer_matrix, big_x, big_y)
    _, t_self = timed(chamfer_matrix, big_x)
    large = {"n": m, "against_another_seconds": t_cross, "against_itself_seconds": t_self}
    print(large, flush=True)
    payload = {"command": command(), "machine": machine(), "note": args.note, "points": fam.surface.shape[1],
               "rows": rows, "large": large}
    write_json("field_metrics-speed", payload)
    write_section("field_metrics-speed", speed_page(payload))


def speed_page(payload: dict) -> str:
    """The ``speed`` section of docs/benchmarks/field_metrics.md from its results."""
    rows, large = payload["rows"], payload["large"]
    m = large["n"]
    lines = [f"## Chamfer matrix: KD-trees against all pairwise distances", "",
             f"Sets of shape-fields-3d surfaces, {payload['points']:,} points each (HyperDiffusion's protocol). "
             "All pairs: every squared distance of every pair of clouds by blocked matrix products in float32 "
             "(the definition); KD-trees: `weightgen.evaluate.generative.chamfer_matrix` (scipy's cKDTree, "
             "exact nearest neighbours in float64; a set against itself computes each pair once).", "",
             "| matrix | shapes | all pairs | KD-trees | speed-up | largest difference (abs / rel) |",
             "|---|---|---|---|---|---|",
             *(f"| {r['what']} | {r['n']} x {r['n']} | {r['all_pairs_seconds']:.1f} s | {r['kd_tree_seconds']:.1f} s | "
               f"{r['all_pairs_seconds'] / r['kd_tree_seconds']:.1f}x | {r['max_abs_diff']:.1e} / {r['max_rel_diff']:.1e} |"
               for r in rows), "",
             f"KD-trees alone on {m} x {m} shapes: {large['against_another_seconds']:.1f} s against another set, "
             f"{large['against_itself_seconds']:.1f} s against itself.", "",
             f"Machine: {payload['machine']['cpu']}, {payload['machine']['torch_threads']} torch thread(s), "
             f"{payload['machine']['date']}. Command: `{payload['command']}`. {payload['note']}".rstrip()]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-half", type=int, default=100, help="shapes in each half")
    p.add_argument("--points", type=int, default=256, help="surface points per shape the Chamfer distance uses")
    p.add_argument("--count", type=int, default=3000, help="shapes make_shapes is timed on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="", help="a sentence for the page, e.g. that the machine was shared")
    p.add_argument("--speed", type=int, default=0, help="time the Chamfer matrix on sets of this many shapes")
    p.add_argument("--large", type=int, default=100, help="with --speed: the KD-trees alone on sets this large")
    p.add_argument("--page-only", action="store_true", help="rewrite the speed section from its saved results")
    args = p.parse_args()
    if args.page_only:
        write_section("field_metrics-speed", speed_page(json.loads(result_path("field_metrics-speed").read_text())))
        return
    if args.speed:
        torch.set_num_threads(1)  # a shared machine: one thread per process
        return speed(args)

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
