"""What the sequential Mamba scan buys on a CPU (ours: ``weightgen/generators/mamba_scan.py``).

    python benchmarks/mamba_scan.py [--steps 40] [--rounds 2] [--threads 2]

Two measurements, each with mambapy's parallel scan and with the token-by-token one, set here
with ``use_scan`` (the library itself scans in parallel on a GPU and token by token elsewhere). (1) The recurrent model alone (2 Mamba layers, d_state 16), forward and backward, at
the shapes our RPG configs train with. (2) Whole RPG fit steps of rpg_whole.py's
``cnn-rpg+x0+ema-cos-warm`` and ``vit-rpg+x0+ema-cos-warm`` settings on their 20-seed digits
zoos (built if missing), the same seed for both scans: seconds per step and the last training
loss, which must agree to float rounding (the two scans multiply in different orders). Each
measurement alternates the scans ``--rounds`` times and keeps the fastest round of each.
Writes benchmarks/results/mamba_scan/ and a section of docs/benchmarks/mamba_scan.md.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from mambapy.mamba import Mamba, MambaConfig

from common import WORK, command, fmt, machine, write_json, write_section
from rpg_whole import settings
from weightgen.config import parse_config
from weightgen.generators.mamba_scan import use_scan
from weightgen.generators.rpg import RPG
from weightgen.pipeline import fit_generator
from weightgen.zoo import Zoo, build_zoo

SCANS = ("parallel", "sequential")
# (what trains at this shape, checkpoints per step, tokens, d_model)
SHAPES = (("rpg_whole.py CNN (4 checkpoints x 228-240 tokens)", 4, 240, 256),
          ("rpg_whole.py tiny ViT (4 checkpoints x 295 tokens)", 4, 295, 256),
          ("unseen_tasks.py (16 checkpoints x 35 tokens)", 16, 35, 128),
          ("rpg_resnet18.py (2 checkpoints x 1,407 tokens)", 2, 1407, 256))
FIT_SETTINGS = ("cnn-rpg+x0+ema-cos-warm", "vit-rpg+x0+ema-cos-warm")


def backbone_seconds(scan: str, batch: int, tokens: int, d_model: int, repeats: int = 5) -> float:
    torch.manual_seed(0)
    net = use_scan(Mamba(MambaConfig(d_model=d_model, n_layers=2, d_state=16)), scan)
    x = torch.randn(batch, tokens, d_model)
    net(x).square().mean().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        net(x).square().mean().backward()
    return (time.perf_counter() - start) / repeats


def fit_seconds(setting: str, overrides: dict, steps: int, scan: str | None = None) -> tuple[float, float]:
    """(seconds per step, last training loss) of a ``steps``-step fit of rpg_whole.py's ``setting``, its
    generator spec updated with ``overrides``, on its zoo (built if missing); ``scan``: the Mamba scan
    the fit trains with (None: the library's choice for the device)."""
    s = next(s for s in settings() if s["name"] == setting)
    raw = copy.deepcopy(s["config"])
    raw["generator"] = {**raw["generator"], "steps": steps, **overrides}
    cfg = parse_config(raw, setting)
    zoo_dir = WORK / "zoos" / s["zoo"]
    build_zoo(cfg, zoo_dir, show_progress=False)
    with Zoo.open(zoo_dir) as zoo:
        if scan is None:
            _, stats = fit_generator(cfg, zoo, show_progress=False)
            return stats["fit_seconds"] / steps, stats["diffusion_loss"]
        # fit_generator's fit, with the recurrent model's scan set before training
        seed = cfg.seed if cfg.generator.seed is None else cfg.generator.seed
        torch.manual_seed(seed)
        gen = RPG.from_zoo(cfg.generator, zoo, cfg.tokenizer)
        use_scan(gen.net.backbone.net, scan)
        start = time.perf_counter()
        stats = gen.fit(zoo, show_progress=False, seed=seed)
    return (time.perf_counter() - start) / steps, stats["diffusion_loss"]


def fastest(measure, options, rounds: int) -> dict:
    """``measure(option)`` (a tuple, seconds first) for each option, alternated ``rounds`` times; the fastest of each."""
    out = {}
    for _ in range(rounds):
        for option in options:
            got = measure(option)
            if option not in out or got[0] < out[option][0]:
                out[option] = got
    return out


def timing_args(doc: str) -> argparse.Namespace:
    """``--steps`` (fit steps per measurement), ``--rounds`` and ``--threads`` (set for torch) of a timing benchmark."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--steps", type=int, default=40, help="fit steps per measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def main() -> None:
    args = timing_args(__doc__)
    rows = []
    for what, batch, tokens, d_model in SHAPES:
        t = fastest(lambda scan: (backbone_seconds(scan, batch, tokens, d_model),), SCANS, args.rounds)
        rows.append({"what": f"2 Mamba layers alone, forward + backward: {what}", "shape": [batch, tokens, d_model],
                     "parallel_s": t["parallel"][0], "sequential_s": t["sequential"][0]})
        print(f"== {rows[-1]['what']}: parallel {t['parallel'][0]:.3f} s, sequential {t['sequential'][0]:.3f} s", flush=True)
    for setting in FIT_SETTINGS:
        t = fastest(lambda scan: fit_seconds(setting, {}, args.steps, scan), SCANS, args.rounds)
        rows.append({"what": f"whole RPG fit step, rpg_whole.py {setting} ({args.steps} steps)", "shape": None,
                     "parallel_s": t["parallel"][0], "sequential_s": t["sequential"][0],
                     "parallel_loss": t["parallel"][1], "sequential_loss": t["sequential"][1]})
        print(f"== {rows[-1]['what']}: parallel {t['parallel'][0]:.3f} s/step, sequential {t['sequential'][0]:.3f} s/step; "
              f"last loss {t['parallel'][1]:.6f} / {t['sequential'][1]:.6f}", flush=True)
    m = machine()
    write_json("mamba_scan", {"benchmark": "mamba_scan", "command": command(), "machine": m, "results": rows})
    lines = ["| what | (checkpoints, tokens, d_model) | parallel scan s | sequential scan s | speed-up | last loss parallel / sequential |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        shape = "–" if r["shape"] is None else f"({', '.join(map(str, r['shape']))})"
        loss = (f"{r['parallel_loss']:.6f} / {r['sequential_loss']:.6f}" if "parallel_loss" in r else "–")
        lines.append(f"| {r['what']} | {shape} | {fmt(r['parallel_s'], '.3f')} | {fmt(r['sequential_s'], '.3f')} | "
                     f"{r['parallel_s'] / r['sequential_s']:.2f}x | {loss} |")
    write_section("mamba_scan", f"""## The Mamba scan on a CPU: parallel or token by token (issue 4)

Command: `{command()}` on {m['platform']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, torch {m['torch']} ({m['date']}).
The Mamba scan (ours, speed only): mambapy's parallel scan, or the recurrence token by token
(`weightgen/generators/mamba_scan.py`); the library scans in parallel on a GPU and token by token
elsewhere, this benchmark sets each in turn. Seconds per forward + backward (the recurrent model alone) or per fit step (the whole RPG: recurrent
model, U-Net denoiser, optimizer, EMA), the fastest of {args.rounds} alternating rounds each.

{chr(10).join(lines)}
""")
    print("wrote benchmarks/results/mamba_scan/default.json")


if __name__ == "__main__":
    main()
