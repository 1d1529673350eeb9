"""What training RPG's denoiser under bfloat16 autocast buys (ours: ``generator.denoiser_precision``).

    python benchmarks/denoiser_precision.py [--steps 40] [--rounds 2] [--threads 2]

Whole RPG fit steps of rpg_whole.py's settings on their 20-seed digits zoos (built if missing), with the
denoiser's training passes in float32 (the default) and under bfloat16 autocast, the same seed for both:
seconds per step and the last training loss, which agree to bfloat16 rounding. The weights, the optimizer,
the EMA, the recurrent model and sampling stay float32 either way; what bfloat16 does to the fitted
generator's networks is judged by rpg_whole.py's ``-bf16`` rows, not here. The speed depends on the
hardware: a CPU with AMX (or a GPU) runs bfloat16 convolutions natively, elsewhere they are emulated.
Each measurement alternates the precisions ``--rounds`` times and keeps the fastest round of each.
Writes benchmarks/results/denoiser_precision/ and a section of docs/benchmarks/denoiser_precision.md.
"""
from __future__ import annotations

from common import command, fmt, machine, made_on, write_json, write_section
from mamba_scan import fastest, fit_seconds, timing_args

PRECISIONS = ("float32", "bfloat16")
# 64 tokens of each checkpoint denoised per step (the released recipe's share) and 256 (-t256, ours)
FIT_SETTINGS = ("cnn-rpg+x0+ema-cos-warm", "vit-rpg+x0+ema-cos-warm", "vit-rpg+x0+ema-cos-warm-t256")


def main() -> None:
    args = timing_args(__doc__)
    rows = []
    for setting in FIT_SETTINGS:
        t = fastest(lambda p: fit_seconds(setting, {"denoiser_precision": p}, args.steps), PRECISIONS, args.rounds)
        rows.append({"setting": setting, "steps": args.steps, **{f"{p}_s": t[p][0] for p in PRECISIONS},
                     **{f"{p}_loss": t[p][1] for p in PRECISIONS}})
        print(f"== {setting}: " + ", ".join(f"{p} {t[p][0]:.3f} s/step (last loss {t[p][1]:.5f})" for p in PRECISIONS),
              flush=True)
    payload = {"benchmark": "denoiser_precision", "command": command(), "machine": machine(), "results": rows}
    write_json("denoiser_precision", payload)
    m = payload["machine"]
    lines = ["| rpg_whole.py setting | float32 s/step | bfloat16 s/step | speed-up | last loss float32 / bfloat16 |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {fmt(r['float32_s'], '.3f')} | {fmt(r['bfloat16_s'], '.3f')} | "
                     f"{r['float32_s'] / r['bfloat16_s']:.2f}x | {r['float32_loss']:.5f} / {r['bfloat16_loss']:.5f} |")
    write_section("denoiser_precision", f"""## RPG's denoiser trained in bfloat16 (issue 4)

Command: {made_on(payload)}; CPU {m['cpu']} (bfloat16 in hardware: {', '.join(m['cpu_bf16']) or 'none'}), torch CPU capability {m['cpu_capability']}, {m['torch_threads']} torch threads{'' if m['cuda'] is None else ', GPU ' + m['cuda']}.
`generator.denoiser_precision` (ours, speed): the 1D conv U-Net's training forward and backward under
bfloat16 autocast; its weights, AdamW, the EMA, the Mamba recurrence and sampling stay float32. Seconds per
whole fit step ({args.steps} steps, the same seed; the fastest of {args.rounds} alternating rounds each) and the
last training loss. What it does to the generated networks: rpg_whole.py's `-bf16` rows.

{chr(10).join(lines)}
""")
    print("wrote benchmarks/results/denoiser_precision/default.json")


if __name__ == "__main__":
    main()
