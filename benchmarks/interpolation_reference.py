"""Networks between two training runs, made without learning, judged as samples (issue 4's targets, calibrated).

    python benchmarks/interpolation_reference.py [--only cnn-aligned mlp vit-aligned ...] [--weights 0.1 0.25 0.5]

``weightgen.diagnostics.interpolated`` (ours) draws 50 pairs of training checkpoints from two different runs
and returns ``(1 - w) a + w b``. On the rpg_whole seeds zoos as trained (``cnn``, ``mlp``, ``vit``) the runs'
hidden units are in unrelated orders; on the same zoos aligned by weight matching (``-aligned``,
``zoo.align``) they share one. This is what a generator that makes networks between runs can be
compared with, and it tells whether issue 4's three targets (mean >= 99% of the
originals' mean, best >= original best, lower max IoU than noise-added originals at the same accuracy)
can be met by a network no run holds that nothing learned. The CNN's made networks (interpolations,
noise-added originals) get BatchNorm statistics recomputed on the training inputs (``evaluate.recalibrate_bn``)
where the setting says so, as the weight average of an aligned zoo needs.
Rows of earlier invocations that this one does not redo are kept (one table for all).
Writes benchmarks/results/interpolation_reference/ and a section of docs/benchmarks/interpolation_reference.md.
"""
from __future__ import annotations

import copy
import time

import torch

from common import (WORK, command, fmt, keep_earlier, machine, more_novel_than_noise, row_commands, settings_args, summarize,
                    write_json, write_section)
from rpg_whole import SEEDS_ZOO, TOKENS, ZOOS
from weightgen.config import parse_config
from weightgen.diagnostics import interpolated
from weightgen.evaluate.judging import novelty_note
from weightgen.pipeline import evaluate_samples, train_stack
from weightgen.tokens.tokenizer import Tokenizer
from weightgen.zoo import Zoo, build_zoo

N = 50


def settings() -> list[dict]:
    """Each rpg_whole zoo a net can be aligned for, as trained and aligned; the CNN also aligned without
    recomputed BatchNorm statistics (its interpolated running statistics used as they are)."""
    out = []
    for net in ("cnn", "mlp", "vit"):
        for aligned in (False, True):
            zoo = {**SEEDS_ZOO, **({"align": "weight_matching"} if aligned else {})}
            name = f"{net}{'-aligned' if aligned else ''}"
            bn = [True, False] if net == "cnn" and aligned else [net == "cnn"]
            for recalibrate in bn:
                config = {"name": f"interpolation-{name}", "seed": 0, "task": {"name": "digits"}, **ZOOS[net], "zoo": zoo,
                          "tokenizer": TOKENS, "evaluate": {"n_noise": N, "recalibrate_bn": recalibrate}}
                out.append({"name": name + ("" if recalibrate or net != "cnn" else "-stored-bn"),
                            "zoo": WORK / "zoos" / f"rpg-whole-{name}", "aligned": aligned, "config": config})
    return out


def judge(s: dict, weight: float, made_by: dict) -> dict:
    """One setting at one weight; ``made_by``: this invocation's command and machine, stored in the row."""
    cfg = parse_config(copy.deepcopy(s["config"]), s["name"])
    build_zoo(cfg, s["zoo"], show_progress=False)  # the benchmark's zoo, built (or checked) once
    with Zoo.open(s["zoo"]) as zoo:
        names = Tokenizer.from_spec(zoo, cfg.tokenizer).names
        train = train_stack(zoo)
        runs = [m.run for m in zoo.members("train")]
        made = interpolated(train, names, runs, weight, N, seed=cfg.seed)
        report = evaluate_samples(zoo, [made], names, None, cfg, title=f"{s['name']}: interpolated at w={weight:g}")
    report.update(timing={}, fit=None)
    row = summarize(s["name"], report)
    o, g = row["original"], row["generated"]
    row.update(weight=weight, aligned=s["aligned"], **made_by, recalibrate_bn=report["recalibrate_bn"],
               heldout=report["groups"].get("heldout", {}).get("mean"),
               novelty_note=novelty_note(report["groups"], head="novelty at equal accuracy: interpolated",
                                         who="interpolated models"))
    row["targets"] = {"mean_ge_99pct_original_mean": g["mean"] >= 0.99 * o["mean"],
                      "best_ge_original_best": g["best"] >= o["best"],
                      "more_novel_than_noise": more_novel_than_noise(row)}
    return row


def main() -> None:
    def extra(ap):
        ap.add_argument("--weights", type=float, nargs="*", default=[0.1, 0.25, 0.5],
                        help="w of (1 - w) a + w b, a and b checkpoints of two different runs")
    args = settings_args(__doc__, extra)
    rows, started = [], time.time()
    made_by = {"command": command(), "machine": machine()}  # one invocation, one line of the section's commands
    for s in settings():
        if args.only and s["name"] not in args.only:
            continue
        for w in args.weights:
            rows.append(judge(s, w, made_by))
            r = rows[-1]
            print(f"== {s['name']} w={w:g}: mean {fmt(r['generated']['mean'])} at max IoU "
                  f"{fmt(r['generated']['max_iou_mean'], '.3f')}; {r['targets']}", flush=True)
    rows = keep_earlier("interpolation_reference", rows, key=lambda r: (r["name"], r["weight"]), fill=("command", "machine"))
    payload = {"benchmark": "interpolation_reference", **made_by, "seconds": time.time() - started, "results": rows}
    write_json("interpolation_reference", payload)
    write_doc(rows)
    print(f"wrote benchmarks/results/interpolation_reference/default.json ({time.time() - started:.0f} s)")


def write_doc(rows: list[dict]) -> None:
    """The section of docs/benchmarks/interpolation_reference.md, from the rows of benchmarks/results/interpolation_reference/."""
    lines = ["| zoo | w | BatchNorm statistics | original best / mean | weight avg | interpolated best / mean / median (worst) "
             "| max IoU orig / interpolated | nearest dist orig / interpolated | targets |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, g = r["original"], r["generated"]
        stats = "recomputed" if r["recalibrate_bn"] else ("stored (interpolated)" if r["name"].startswith("cnn") else "–")
        lines.append(
            f"| {r['name'].removesuffix('-stored-bn')} | {r['weight']:g} | {stats} | {fmt(o['best'])} / {fmt(o['mean'])} "
            f"| {fmt(r['weight_average'])} | {fmt(g['best'])} / {fmt(g['mean'])} / {fmt(g['median'])} ({fmt(g['worst'])}) "
            f"| {fmt(o['max_iou_mean'], '.3f')} / {fmt(g['max_iou_mean'], '.3f')} "
            f"| {fmt(o['nearest_distance_mean'], '.3g')} / {fmt(g['nearest_distance_mean'], '.3g')} "
            f"| {' '.join(('✔' if v else '✘') + k for k, v in r['targets'].items())} |")
    notes = "\n".join(f"- **{r['name']}, w={r['weight']:g}**: {r['novelty_note']}" for r in rows)
    write_section("interpolation_reference", f"""## Networks between two runs, made without learning (issue 4)

Commands, and the rows each made:
{row_commands(rows)}

The rpg_whole seeds zoos (20 training runs x last 5 checkpoints of the digits CNN with BatchNorm, of the
MLP [32] and of the tiny ViT), as trained and aligned by weight matching (`zoo.align`, ours). {N} networks (1 − w) a + w b, a and b
checkpoints of two different runs drawn at random (`weightgen.diagnostics.interpolated`, ours), judged exactly
as a generator's samples: {N} noise-added originals per σ, BatchNorm statistics of every made network
(these, the weight average, noise-added originals) recomputed on the training inputs where the column says
so. Targets as issue 4's for generated networks.

{chr(10).join(lines)}

The evaluator's novelty notes:

{notes}
""")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
