"""Whole networks from many seeds: RPG against p-diff on the same zoo (issue 4, item 3).

    python benchmarks/rpg_whole.py [--only cnn-rpg ...] [--scale 1.0] [--reuse] [--temperature 0.5] [--samples 100] [--fit-seed 1] [--fold-bn] [--fit-only] [--rejudge]

Each zoo holds 20 independent training runs (seeds) of one digits net, the last 5 checkpoints of
each, 17 steps (one epoch) apart: 100 whole networks (BatchNorm running statistics
included, so a generated CNN is complete). RPG and p-diff are fitted on the same zoo and
judged by the same evaluator. ``--scale`` multiplies generator training steps. ``--temperature``
samples at that temperature (ours; the run folders and the table get a ``-tT`` suffix), ``--samples``
draws that many networks (``-nN``); with ``--reuse`` the generator of the run at the default sampling
settings is sampled again instead of refitted (or, where the fit itself drew N networks, that of the ``-nN`` run).
``--fit-only`` fits and saves the generators and judges nothing; a later ``--reuse`` run
samples and judges them (fit on a lent GPU, judge on the CPU).

Targets (issue 4): generated mean accuracy >= 99% of the originals' mean, generated best
>= original best, and lower max IoU than noise-added originals at the same accuracy.
Writes benchmarks/results/rpg_whole/ and a section of docs/benchmarks/rpg_whole.md.
"""
from __future__ import annotations

import copy
import time

import torch

from common import STEP_KEYS, WORK, command, fit_or_reuse, fmt, machine, more_novel_than_noise, run_or_reuse, scale_of, scaled_steps, settings_args, summarize, tagged, teacher_forced_accuracy, where, write_json, write_section
from weightgen.config import parse_config
from weightgen.zoo import Zoo, build_zoo

ZOOS = {
    "cnn": {"net": {"name": "cnn", "batchnorm": True},
            "train": {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "epochs": 20}},
    "vit": {"net": {"name": "vit"},
            "train": {"optimizer": "adam", "lr": 0.003, "batch_size": 64, "epochs": 30}},
    # rpg_ablation.py's MLP [32] recipe: the net without BatchNorm, where averaging aligned runs needs no
    # recomputed statistics
    "mlp": {"net": {"name": "mlp", "hidden": [32]},
            "train": {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "epochs": 30}},
}
# 20 training runs (seeds 0-19) and 10 held out (seeds 20-29): networks of the zoo's own distribution that
# no generator sees, judged beside every sample as the reference for the novelty test (novelty_reference.py).
SEEDS_ZOO = {"mode": "seeds", "runs": 30, "heldout": 10, "checkpoints": 5, "every": 17}
TOKENS = {"include": ["*"], "buffers": True}
# RPG as released (2 Mamba layers, 2D positions, permutation states, epsilon), sized for a
# 15-20k-parameter net and a 2-core CPU: 64-value tokens, 64 tokens of each of 4 checkpoints per step.
RPG = {"method": "rpg", "d_model": 256, "layers": 2, "steps": 1000, "batch_size": 4, "tokens_per_step": 64,
       "lr": 1e-3}
# p-diff's 'medium' autoencoder for a 15k-value vector (as in benchmarks/pdiff.py's whole-network setting).
PDIFF = {"method": "pdiff", "fold_rate": 5, "kernel_size": 5, "enc_channels": [4, 4, 4, 4],
         "dec_channels": [4, 32, 32, 8], "denoiser_channels": [16, 32, 64], "batch_size": 50,
         "ae_steps": 1500, "diffusion_steps": 1500}
SAMPLE = {"n": 50, "sampler": "ddim", "steps": 50}


def settings() -> list[dict]:
    out = []
    for net, z in ZOOS.items():
        x0 = {**RPG, "diffusion": {"prediction": "sample"}}
        # ours: x0 with an EMA (0.999) of the denoiser sampled and the lr decayed to 0, against the
        # noise of the last steps (docs/results.md, "Unseen tasks")
        x0_ema_cos = {**x0, "ema": 0.999, "lr_schedule": "cosine"}
        # for a GPU: 16 checkpoints x 256 tokens per step (16x the values of a 4 x 64 step)
        b16 = {"batch_size": 16, "tokens_per_step": 256}
        variants = (("rpg", RPG, {"token_size": 64}),
                    ("rpg+x0", x0, {"token_size": 64}),
                    ("rpg+v", {**RPG, "diffusion": {"prediction": "v_prediction"}}, {"token_size": 64}),
                    # ... without permutation states: on an aligned zoo (--align) the runs share one order,
                    # so noise alone may pick a network that is no run's
                    ("rpg+x0-nostate", {**x0, "permutation_state": False}, {"token_size": 64}),
                    # ours, for a GPU: 16 checkpoints x every token per step
                    ("rpg+x0+b16", {**x0, **b16}, {"token_size": 64}),
                    ("rpg+x0+ema-cos", x0_ema_cos, {"token_size": 64}),
                    # ... for a GPU: b16
                    ("rpg+x0+ema-cos-b16", {**x0_ema_cos, **b16}, {"token_size": 64}),
                    # ... with the EMA warmed up (ema_warmup, ours): over a fit of a few thousand steps the plain
                    # 0.999 average still holds the first steps' weights
                    ("rpg+x0+ema-cos-b16-warm", {**x0_ema_cos, **b16, "ema_warmup": True}, {"token_size": 64}),
                    # ... and at 4 x 64 (a CPU fit of a few thousand steps, which a plain 0.999 EMA would still tie to its start)
                    ("rpg+x0+ema-cos-warm", {**x0_ema_cos, "ema_warmup": True}, {"token_size": 64}),
                    # ... denoising 256 tokens of each checkpoint per step (the ViT's 295 nearly all): with the
                    # sequential scan the recurrent pass does not dominate a CPU step, so 4x the denoised values
                    # cost less than 2x the step; compared at equal fit time
                    ("rpg+x0+ema-cos-warm-t256", {**x0_ema_cos, "ema_warmup": True, "tokens_per_step": 256},
                     {"token_size": 64}),
                    # ... with the denoiser trained under bfloat16 autocast (denoiser_precision, ours; speed): on
                    # a CPU with AMX a step is cheaper (benchmarks/denoiser_precision.py), so more steps fit in the same time
                    ("rpg+x0+ema-cos-warm-t256-bf16", {**x0_ema_cos, "ema_warmup": True, "tokens_per_step": 256,
                                                       "denoiser_precision": "bfloat16"}, {"token_size": 64}),
                    # ... and without permutation states: every network from noise alone, none tied to a run
                    ("rpg+x0+ema-cos-nostate", {**x0_ema_cos, "permutation_state": False}, {"token_size": 64}),
                    # ... and with the paper's recurrent input (each token's prototype reads the tokens before
                    # it, autoregressive at sampling): without states, positions alone give every sample the
                    # same prototypes, so its tokens are drawn independently of each other; reading the
                    # previous tokens lets one network's tokens agree while the noise alone picks the network.
                    # The recurrent pass reads every token of a checkpoint anyway: denoise them all (256 per step).
                    ("rpg+x0+ema-cos-tokens-nostate", {**x0_ema_cos, "permutation_state": False, "recurrent_input": "tokens",
                                                       "tokens_per_step": 256}, {"token_size": 64}),
                    ("rpg+x0+ema-cos-tokens", {**x0_ema_cos, "recurrent_input": "tokens", "tokens_per_step": 256},
                     {"token_size": 64}),
                    ("pdiff", PDIFF, {"token_size": "flat", "normalize": "none"}),
                    # ours: per-value normalization, which lifts p-diff on one run's whole CNN from chance
                    # (benchmarks/pdiff.py)
                    ("pdiff+element-norm", PDIFF, {"token_size": "flat", "normalize": "element"}))
        for method, gen, tok in variants:
            out.append({"name": f"{net}-{method}", "zoo": f"rpg-whole-{net}", "config": {
                "name": f"bench-whole-{net}-{method.replace('+', '-')}", "seed": 0, "task": {"name": "digits"}, **z, "zoo": SEEDS_ZOO,
                "tokenizer": {**TOKENS, **tok}, "generator": gen, "sample": SAMPLE, "evaluate": {"n_noise": 50}}})
    return out


def runs_avg(ra: dict | None) -> str:
    """Each run's own weight average in the table (none in reports judged before 2026-12-02)."""
    return "" if ra is None else f" ({fmt(ra['best'])} / {fmt(ra['mean'])}, {fmt(ra['max_iou_mean'], '.3f')})"


def temperature_note(t: float) -> str:
    if t == 1:
        return ""
    return (f" Sampled at temperature {t:g} (ours: DDIM's starting noise scaled by {t:g}) from the generators "
            "fitted for the table at temperature 1 (fit s: theirs); sampled and judged on this machine's CPU.")


def fit_seed_note(seed: int | None) -> str:
    if seed is None:
        return ""
    return (f" Generators fitted with `generator.seed: {seed}` (the fit's own draws: initial weights, batches, noise) on "
            "the same zoo; the tables without an -fs tag fit with the experiment's seed 0. Several such fits of one "
            "config measure how far one fit can be from the next.")


def init_note(source: str | None, lr: float | None) -> str:
    if not source:
        return ""
    return (f" Each fit continues the generator saved in `{source}` (`generator.init_from`, ours: its weights and EMA, "
            f"a fresh optimizer{f' at lr {lr:g}' if lr is not None else ''}); the steps column counts only the new steps.")


def main() -> None:
    def extra(ap):
        ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (scale of DDIM's starting noise)")
        ap.add_argument("--samples", type=int, default=SAMPLE["n"],
                        help="networks sampled per setting (the paper's p-diff evaluation draws 100; run folders "
                             "and the table get a -nN suffix when not the default)")
        ap.add_argument("--align", action="store_true",
                        help="zoo.align: weight_matching (ours): every run's hidden units put in the first run's order "
                             "(a separate zoo folder, -aligned; nets mlp, cnn and vit)")
        ap.add_argument("--fold-bn", action="store_true",
                        help="zoo.fold_bn (ours): every checkpoint's BatchNorms folded into the convs before them, so "
                             "no BatchNorm statistic is generated (a separate zoo folder, -folded; BatchNorm nets)")
        ap.add_argument("--recalibrate-bn", action="store_true",
                        help="evaluate.recalibrate_bn (ours): BatchNorm statistics of every made network recomputed on "
                             "the training inputs before judging (-bn; judges the generators fitted without it)")
        ap.add_argument("--fit-seed", type=int, default=None,
                        help="generator.seed: fit with these draws instead of the experiment's seed, on the same "
                             "zoo (run folders and the table get a -fsN suffix), to measure fit-to-fit spread")
        ap.add_argument("--init-from", default=None, metavar="GENERATOR_DIR",
                        help="generator.init_from (ours): continue the fit of this saved generator (same setting) for "
                             "the steps given here, with a fresh optimizer; give the run folder a --tag")
        ap.add_argument("--lr", type=float, default=None, help="generator.lr instead of the setting's")
        ap.add_argument("--rejudge", action="store_true",
                        help="sample and judge each setting's saved generator again with today's evaluator (its fit "
                             "kept), e.g. after the evaluator gained a baseline")
        ap.add_argument("--fit-only", action="store_true",
                        help="fit and save the generators, judge nothing (e.g. fit on a lent GPU, judge later with --reuse)")
    args = settings_args(__doc__, extra)
    if args.align:
        args.tag = "-".join(filter(None, [args.tag, "aligned"]))
    if args.fold_bn:
        args.tag = "-".join(filter(None, [args.tag, "folded"]))
    if args.fit_seed is not None:
        args.tag = "-".join(filter(None, [args.tag, f"fs{args.fit_seed}"]))
    n_samples = f"n{args.samples}" if args.samples != SAMPLE["n"] else ""
    tag = "-".join(filter(None, [args.tag, f"t{args.temperature:g}" if args.temperature != 1 else "",
                                 "bn" if args.recalibrate_bn else "", n_samples]))
    fit_tag = "-".join(filter(None, [args.tag, n_samples]))
    rows, started = [], time.time()
    for s in settings():
        if args.only and s["name"] not in args.only:
            continue
        raw = copy.deepcopy(s["config"])
        zoo_name = s["zoo"]
        if args.align:
            raw["zoo"] = {**raw["zoo"], "align": "weight_matching"}
            zoo_name += "-aligned"
        if args.fold_bn:
            if not raw["net"].get("batchnorm"):
                continue  # nothing to fold
            raw["zoo"] = {**raw["zoo"], "fold_bn": True}
            zoo_name += "-folded"
        raw = scaled_steps(raw, scale_of(args, s["name"]))
        raw["generator"]["diffusion"] = {**raw["generator"].get("diffusion", {}), "temperature": args.temperature}
        raw["sample"] = {**raw["sample"], "n": args.samples}
        if args.fit_seed is not None:
            raw["generator"]["seed"] = args.fit_seed
        if args.init_from:
            raw["generator"]["init_from"] = args.init_from
        if args.lr is not None:
            raw["generator"]["lr"] = args.lr
        if args.recalibrate_bn:
            raw["evaluate"] = {**raw["evaluate"], "recalibrate_bn": True}
        cfg = parse_config(raw, s["name"])
        print(f"== {s['name']}", flush=True)
        if args.fit_only:
            zoo_dir = WORK / "zoos" / zoo_name
            build_zoo(cfg, zoo_dir, show_progress=False)
            with Zoo.open(zoo_dir) as zoo:
                _, stats = fit_or_reuse(cfg, zoo, WORK / "runs" / tagged(cfg.name, args.tag), args.reuse)
            print(f"   fitted in {stats['fit_seconds']:.0f} s (loss {stats['diffusion_loss']:.4f}); not judged (--fit-only)", flush=True)
            continue
        run_dir = WORK / "runs" / tagged(cfg.name, tag)
        # the fit to sample again: the run at the default sampling settings, or the one at temperature 1 with this
        # many samples (a fit made with --samples N lives there)
        fits = [WORK / "runs" / tagged(cfg.name, t) for t in dict.fromkeys((args.tag, fit_tag)) if t != tag]
        report = run_or_reuse(cfg, WORK / "zoos" / zoo_name, run_dir, args.reuse, fitted_in=fits, rejudge=args.rejudge)
        row = summarize(s["name"], report)
        row["teacher_forced_mean"] = teacher_forced_accuracy(run_dir, WORK / "zoos" / zoo_name)
        o, g = row["original"], row["generated"]
        row["steps"] = {k: raw["generator"][k] for k in STEP_KEYS if k in raw["generator"]}
        row["targets"] = {
            "mean_ge_99pct_original_mean": g["mean"] is not None and g["mean"] >= 0.99 * o["mean"],
            "best_ge_original_best": g["best"] is not None and g["best"] >= o["best"],
            "more_novel_than_noise": more_novel_than_noise(row),
        }
        rows.append(row)
        print(f"   generated best/mean/median {fmt(g['best'])} / {fmt(g['mean'])} / {fmt(g['median'])}; "
              f"original {fmt(o['best'])} / {fmt(o['mean'])} / {fmt(o['median'])}; {row['targets']}", flush=True)
    if args.fit_only:
        return
    payload = {"benchmark": "rpg_whole", "command": command(), "machine": machine(), "scale": args.scale,
               "seconds": time.time() - started, "results": rows}
    write_json(tagged("rpg_whole", tag), payload)
    lines = ["| setting | steps | params | original best / mean / median | weight avg (each run's: best / mean, max IoU) | noise σ=0.01 / 0.05 mean acc "
             "| generated best / mean / median (worst) | teacher-forced mean | max IoU orig / σ=0.05 / gen "
             "| nearest dist orig / gen | fit s | targets |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, g, n = r["original"], r["generated"], r["noise"]
        ok = " ".join(("✔" if v else "✘") + k for k, v in r["targets"].items())
        lines.append(
            f"| {r['name']} | {' + '.join(str(v) for v in r['steps'].values())} | {r['generated_params']} | {fmt(o['best'])} / {fmt(o['mean'])} / {fmt(o['median'])} "
            f"| {fmt(r['weight_average'])}{runs_avg(r.get('run_average'))} | {fmt(n.get('0.01', {}).get('mean'))} / {fmt(n.get('0.05', {}).get('mean'))} "
            f"| {fmt(g['best'])} / {fmt(g['mean'])} / {fmt(g['median'])} ({fmt(g['worst'])}) | {fmt(r.get('teacher_forced_mean'))} "
            f"| {fmt(o['max_iou_mean'], '.3f')} / {fmt(n.get('0.05', {}).get('max_iou_mean'), '.3f')} / "
            f"{fmt(g['max_iou_mean'], '.3f')} | {fmt(o['nearest_distance_mean'], '.3g')} / "
            f"{fmt(g['nearest_distance_mean'], '.3g')} | {fmt(r['timing'].get('fit_seconds'), '.0f')} | {ok} |")
    align_note = ("Zoo aligned (`zoo.align: weight_matching`, ours): each run's hidden units permuted, by weight matching, "
                  "into the first training run's order; every network computes what it did, the weight average and the "
                  "distances are measured in that order. ")
    fold_note = ("Zoo folded (`zoo.fold_bn`, ours): in every checkpoint each BatchNorm folded into the conv before it "
                 "(its statistics and scale into the conv's weight and bias) and left an identity; every network "
                 "computes what it did, and the BatchNorm entries, one constant everywhere, are not generated. ")
    bn_note = (" BatchNorm statistics of every made network (weight average, noise-added originals, samples) recomputed "
               "on the training inputs before judging (`evaluate.recalibrate_bn`, ours), from the generators fitted "
               "for the table without it (fit s: theirs).")
    judged_apart = [r["name"] for r in rows if (r.get("machine") or {}).get("cuda") and r["timing"].get("device") == "cpu"]
    apart = f" Fitted on the GPU (`--fit-only`), sampled and judged on a CPU: {', '.join(judged_apart)}." if judged_apart else ""
    notes = "\n".join(f"- **{r['name']}** (steps {r['steps']}): " + "; ".join(r["notes"]) for r in rows)
    write_section(tagged("rpg_whole", tag), f"""## Whole networks from 20 seeds: RPG vs p-diff (issue 4){' — ' + tag if tag else ''}

Command: `{payload['command']}`; runs made on {where(rows)}.
Zoo: 20 independent runs x last 5 checkpoints (one epoch apart) of each digits net, every parameter and
{"(the zoo folded, see below) no " if args.fold_bn else ""}BatchNorm statistic generated (10 more runs held out as the novelty reference since 2026-11-29). RPG: 64-value tokens, 2 Mamba layers (d_model 256), 2D positions, permutation
states, epsilon prediction, steps (in the table) x 4 checkpoints x 64 tokens (the paper trains far longer);
`rpg+x0` is the same with x0 prediction (`diffusion.prediction: sample`, ours), `rpg+v` with v prediction
(`diffusion.prediction: v_prediction`, ours); `+ema-cos`: x0, sampled from an EMA (0.999) of the weights, the
learning rate decayed to 0 by a cosine (ours); `-nostate`: the same without permutation states; `-tokens`: the
recurrent model reads the previous tokens too (the paper's text; autoregressive at sampling), 256 tokens denoised per
step; `b16`: 16 checkpoints x 256 tokens
per step (sized for a GPU); `-warm`: the EMA's decay warmed up as min(0.999, (1 + n) / (10 + n)) (`ema_warmup`, ours). `-t256`: 256 tokens of each checkpoint denoised per step (ours). Teacher-forced mean (`-tokens` rows): the mean accuracy of 5 networks made with each token's prototype read
from the true previous tokens of a training checkpoint, as in training. p-diff: its autoencoder on
the flattened network, autoencoder + diffusion steps in the table; `+element-norm`: each value standardized over the
zoo (ours). {align_note if args.align else ""}{fold_note if args.fold_bn else ""}{args.samples} samples each, DDIM
{SAMPLE['steps']} steps. Targets: mean ≥ 99% of the originals' mean, best ≥ original best, lower max IoU than
noise-added originals at the same accuracy.{temperature_note(args.temperature)}{bn_note if args.recalibrate_bn else ""}{fit_seed_note(args.fit_seed)}{init_note(args.init_from, args.lr)}{apart}

{chr(10).join(lines)}

Notes written by the evaluator:

{notes}
""")
    print(f"wrote benchmarks/results/rpg_whole/{tag or 'default'}.json ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
