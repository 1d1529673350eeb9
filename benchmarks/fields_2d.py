"""Digit fields from noise, judged as a set: the 2D targets of the neural-fields application.

    python benchmarks/fields_2d.py [--variants rpg-class,rpg,pdiff] [--note "..."]

Each variant is the built-in config `fields-2d` (its zoo: the first 700 digits as 32 x 32 fields, 200 held
out) with one generator recipe: ``rpg-class`` is the config itself (RPG conditioned on the class, 1,000 steps,
DPM-Solver++ in 25 steps), ``rpg-class-fast`` the same recipe written out. The others start from the earlier
recipe of 1,500 steps sampled by DDIM in 50 (``rpg-class-1500``): ``rpg`` unconditional; ``pdiff`` (p-diff,
unconditional, the demo's autoencoder and denoiser on the flat parameter vector); ``rpg-class-ddpm`` sampled
by DDPM's 1,000 steps; ``rpg-class-dpm`` by DPM-Solver++ in 25; ``rpg-class-eps`` predicting the noise (RPG's
published choice) instead of the clean sample.
Every variant is judged by the field report (weightgen/fields/report.py): MMD, COV and
1-NNA by L2 over the decoded images against 100 held-out fields, beside the noise and weight-average
baselines and 100 other held-out fields as the reference; class fidelity; novelty at equal quality.

Targets: at least 90% of class-conditioned digits classified as the class asked for, and generated fields
more novel than noise-added training fields of equal quality (MMD).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time

import yaml

from common import ROOT, WORK, command, made_on, machine, result_path, write_json, write_section
from weightgen.config import parse_config
from weightgen.fields.judge import novelty_at_equal_quality
from weightgen.fields.report import fields_report, group_name, write_fields_report
from weightgen.generators import load_generator
from weightgen.pipeline import fit_generator
from weightgen.zoo import Zoo, build_zoo

FIDELITY_TARGET = 0.90
PDIFF = {"method": "pdiff", "fold_rate": 3, "kernel_size": 3, "enc_channels": [2, 2, 2, 2],
         "dec_channels": [2, 16, 16, 8], "denoiser_channels": [16, 32, 64], "ae_steps": 1000,
         "diffusion_steps": 1500}


VARIANTS = ("rpg-class", "rpg-class-fast", "rpg-class-1500", "rpg-class-dpm", "rpg-class-ddpm", "rpg-class-eps",
            "rpg", "pdiff")


def variant_config(name: str):
    """The `fields-2d` config with variant ``name``'s generator recipe."""
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant '{name}'; allowed: {', '.join(VARIANTS)}")
    data = yaml.safe_load((ROOT / "weightgen" / "configs" / "fields-2d.yaml").read_text())
    if name == "rpg-class":
        return parse_config(data, f"fields-2d ({name})")
    if name == "rpg-class-fast":
        data["generator"]["steps"] = 1000
        data["sample"] = {"n": 100, "sampler": "dpm", "steps": 25}
        return parse_config(data, f"fields-2d ({name})")
    data["generator"]["steps"] = 1500  # the earlier recipe, which every variant below changes in one way
    data["sample"] = {"n": 100, "sampler": "ddim", "steps": 50}
    if name == "rpg":
        data["generator"]["condition"] = "none"
    elif name == "rpg-class-ddpm":  # the same fit, sampled by DDPM's 1,000 stochastic steps
        data["sample"] = {"n": 100, "sampler": "ddpm"}
    elif name == "rpg-class-dpm":  # the same fit, sampled by DPM-Solver++ in 25 steps
        data["sample"] = {"n": 100, "sampler": "dpm", "steps": 25}
    elif name == "rpg-class-eps":  # RPG's published epsilon prediction instead of x0
        data["generator"]["diffusion"] = {"prediction": "epsilon"}
    elif name == "pdiff":
        data["generator"] = dict(PDIFF)
        data["tokenizer"] = {"include": ["*"], "token_size": "flat", "normalize": "element"}
        data["sample"] = {"n": 100, "sampler": "ddpm"}
    return parse_config(data, f"fields-2d ({name})")


def run_variant(name: str) -> dict:
    cfg = variant_config(name)
    zoo_dir, run_dir = WORK / "fields_2d" / "zoo", WORK / "fields_2d" / name
    start = time.perf_counter()
    build_zoo(cfg, zoo_dir, show_progress=False)
    zoo_seconds = time.perf_counter() - start
    # one fit per generator recipe, kept so that variants differing only in sampling share it
    key = hashlib.sha256(json.dumps([cfg.generator.model_dump(mode="json"), cfg.tokenizer.model_dump(mode="json")],
                                    sort_keys=True).encode()).hexdigest()[:12]
    gen_dir = WORK / "fields_2d" / "generators" / key
    with Zoo.open(zoo_dir) as zoo:
        if (gen_dir / "fit.json").is_file():
            gen, stats = load_generator(gen_dir, "cpu"), json.loads((gen_dir / "fit.json").read_text())
        else:
            gen, stats = fit_generator(cfg, zoo, show_progress=False)
            gen.save(gen_dir)
            (gen_dir / "fit.json").write_text(json.dumps({"fit_seconds": stats["fit_seconds"]}))
        start = time.perf_counter()
        report = fields_report(gen, zoo, cfg, f"fields-2d: {name}")
        judge_seconds = time.perf_counter() - start
    write_fields_report(report, run_dir)
    row = {"variant": name, "method": cfg.generator.method, "conditional": report["conditional"],
           "zoo_seconds": zoo_seconds, "fit_seconds": stats["fit_seconds"], "sample_and_judge_seconds": judge_seconds,
           "class_fidelity": report["generated"].get("class_fidelity"),
           "nearest_class_matches_asked": report["generated"]["nearest_class_matches_asked"],
           "generative": report["generative"], "reference": report["reference"],
           "novelty_at_equal_quality": report["novelty_at_equal_quality"],
           "heldout_class_fidelity": report["heldout"].get("class_fidelity"), "report": str(run_dir / "report.md")}
    print(f"{name}: " + "; ".join(report["notes"]), flush=True)
    return row


def verdicts(row: dict) -> dict:
    nearest = {k: m["nearest_rms_mean"] for k, m in row["generative"].items()}
    nov = row["novelty_at_equal_quality"] = novelty_at_equal_quality(row["generative"], nearest)
    fid = row["class_fidelity"] if row["conditional"] else None
    return {"class_fidelity": None if fid is None else fid >= FIDELITY_TARGET,
            "more_novel_than_noise": nov["more_novel"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variants", default="rpg-class,rpg,pdiff")
    ap.add_argument("--note", default="", help="a sentence on the conditions (e.g. a shared machine)")
    ap.add_argument("--tag", default="", help="results under benchmarks/results/fields_2d/<tag>.json")
    ap.add_argument("--page-only", action="store_true",
                    help="judge again from the saved results (verdicts and page), without fitting")
    args = ap.parse_args()
    name = f"fields_2d-{args.tag}" if args.tag else "fields_2d"
    if args.page_only:
        result = json.loads(result_path(name).read_text())
        rows = result["variants"]
    else:
        rows = [run_variant(v) for v in args.variants.split(",")]
        result = {"benchmark": "fields_2d", "command": command(), "machine": machine(), "note": args.note,
                  "fidelity_target": FIDELITY_TARGET, "variants": rows}
    for r in rows:
        r["verdicts"] = verdicts(r)
    write_json(name, result)
    note = result["note"]
    word = {True: "reached", False: "MISSED", None: "-"}
    lines = ["| variant | group | MMD (L2) | COV | 1-NNA | nearest training RMS |", "|---|---|---|---|---|---|"]
    for r in rows:
        for key, m in r["generative"].items():
            lines.append(f"| {r['variant']} | {group_name(key)} | {m['mmd']:.3f} | {100 * m['cov']:.1f}% | "
                         f"{100 * m['1nna']:.1f}% | {m['nearest_rms_mean']:.4f} |")
    targets = ["| variant | fit | class fidelity (target >= 90%) | novelty at equal quality |", "|---|---|---|---|"]
    for r in rows:
        nov, v = r["novelty_at_equal_quality"], r["verdicts"]
        fid = "-" if r["class_fidelity"] is None else f"{100 * r['class_fidelity']:.1f}% ({word[v['class_fidelity']]})"
        novelty = ("no noise level as good" if nov["noise"] is None else
                   f"{nov['generated_nearest']:.4f} vs {nov['noise_nearest']:.4f} for noise of equal MMD "
                   f"({word[v['more_novel_than_noise']]})")
        targets.append(f"| {r['variant']} | {r['fit_seconds']:.0f} s | {fid} | {novelty} |")
    ref = rows[0]["reference"]["n"]
    write_section(name, f"""## Digit fields judged as a set{f' ({args.tag})' if args.tag else ''}

Command: {made_on(result)}.{(' ' + note) if note else ''}
The `fields-2d` zoo (the first 700 digits fitted as 32 x 32 fields: 500 for training, 200 held out) with the generators of each variant.
Each group of {ref} fields is set against {ref} held-out fields by L2 over the decoded images; the held-out row
is {ref} other held-out fields, what a perfect generator scores. Class fidelity: the share a digits classifier
assigns to the class asked for. Novelty: mean RMS distance to the nearest training field, against noise-added
training fields interpolated (linearly in MMD) to the generated fields' MMD; where that MMD is worse than every
noise level's, against the noisiest.

{chr(10).join(targets)}

{chr(10).join(lines)}
""")


if __name__ == "__main__":
    main()
