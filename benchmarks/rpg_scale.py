"""RPG at scale: peak memory and time to generate one network, against its parameter count.

    python benchmarks/rpg_scale.py [--only resnet18 ...] [--ddim-steps 2] [--limit-gib 20]
    python benchmarks/rpg_scale.py --giant [vit_giant_patch14_224] [--ddim-steps 1]

For each timm architecture (resnet18 11.7M, ViT-B/16 86M, ConvNeXt-L 198M; inputs are
digits resized to 32x32): a small zoo (one run, its initialization and the state after
one epoch), an RPG of the shape one would train for it (8192-wide tokens as in the paper,
2 Mamba layers, d_model 256), fitted briefly (the memory and time of generation do not
depend on how well it was fitted), then one network generated straight into a safetensors
file in a fresh process whose peak RSS is read from the kernel. The same is tried with
p-diff's flattening (the whole network as one vector through its autoencoder) under an
address-space limit so a failure is an error, not a frozen machine.

``--giant``: a net of about a billion parameters, too large to train a zoo for here: its layout is read on
the meta device and an untrained RPG of the same shape generates it to disk (tag ``giant``).

Generation time is measured with ``--ddim-steps`` DDIM steps (the U-Net part grows
linearly with steps; memory does not). Needs the ``timm`` extra.
Writes benchmarks/results/rpg_scale/, docs/figures/rpg_scale.png and a section of
docs/benchmarks/rpg_scale.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

from common import ROOT, WORK, command, made_on, fmt, machine, result_path, write_json, write_section

ARCHS = [  # name, timm kwargs
    ("resnet18", {"input_size": 32}),
    ("vit_base_patch16_224", {"img_size": 32, "input_size": 32}),
    ("convnext_large", {"input_size": 32}),
]
RPG_GEN = {"method": "rpg", "d_model": 256, "layers": 2, "unet_channels": [8, 16, 32], "kernel_size": 7,
           "steps": 10, "batch_size": 1, "tokens_per_step": 16, "lr": 1e-3}
PDIFF_GEN = {"method": "pdiff", "fold_rate": 5, "kernel_size": 5, "enc_channels": [4, 4, 4, 4],
             "dec_channels": [4, 32, 32, 8], "ae_steps": 1, "diffusion_steps": 1, "batch_size": 2}


def config(arch: str, kwargs: dict, method: str) -> dict:
    gen = RPG_GEN if method == "rpg" else PDIFF_GEN
    tok = {"token_size": 8192} if method == "rpg" else {"token_size": "flat", "normalize": "none"}
    return {"name": f"scale-{arch}-{method}", "seed": 0, "task": {"name": "digits"},
            "net": {"name": f"timm:{arch}", **kwargs},
            "train": {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "epochs": 1},
            "zoo": {"mode": "trajectory", "runs": 1, "checkpoints": 2}, "tokenizer": tok, "generator": gen}


# The start of each job below, run in a fresh process: imports, a seed and the peak RSS reader.
JOB_START = r"""
import json, sys, time, traceback
import torch
torch.manual_seed(0)


def peak():
    # VmHWM is this address space's own high-water mark. (ru_maxrss is not: on Linux it carries
    # over the RSS of the parent forked before exec, which here built the zoo.)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


res = {"ok": False}
"""
# The end of each job: the error, if any, and the peak RSS, printed as one JSON line.
JOB_END = r"""except BaseException as e:
    res["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    traceback.print_exc()
res["peak_rss"] = peak()
print("RESULT " + json.dumps(res), flush=True)
"""

# Fit (optional) and generate one network to a file.
JOB = JOB_START + r"""
from weightgen.config import parse_config
from weightgen.generators import load_generator
from weightgen.pipeline import fit_generator
from weightgen.zoo import Zoo
cfg_json, zoo_dir, gen_dir, out_file, ddim_steps, fit = sys.argv[1:7]
t0 = time.time()
try:
    if fit == "1":
        zoo = Zoo.open(zoo_dir)
        gen, stats = fit_generator(parse_config(json.loads(cfg_json), "bench"), zoo, show_progress=False)
        res["fit_seconds"] = time.time() - t0
        res["fit_peak_rss"] = peak()
        gen.save(gen_dir)
        res["ok"] = True
    else:
        gen = load_generator(gen_dir)
        res["num_tokens"], res["params"] = gen.tokenizer.num_tokens, gen.tokenizer.num_params
        t1 = time.time()
        info = gen.sample_to_file(out_file, seed=0, sampler="ddim", steps=int(ddim_steps))
        res.update(generate_seconds=time.time() - t1, nonfinite=info["nonfinite"], ok=True)
""" + JOB_END


# An RPG for a timm net whose layout is read on the meta device (no weight of the net is ever
# allocated), untrained, generating one network straight into a file.
# Time and memory of generation do not depend on the fit, which a billion-parameter zoo would need.
GIANT_JOB = JOB_START + r"""
torch.set_num_threads(1)  # the CPU is shared: one thread each keeps jobs from spinning against each other
import timm
sys.path.insert(0, "benchmarks")
from common import untrained_rpg
arch, spec_json, out_file, ddim_steps = sys.argv[1:5]
try:
    t0 = time.time()
    with torch.device("meta"):
        net = timm.create_model(arch, pretrained=False)
    res["layout_seconds"], res["layout_peak_rss"] = time.time() - t0, peak()
    gen = untrained_rpg(net.state_dict(), json.loads(spec_json), 8192, f"timm:{arch}")
    res["num_tokens"], res["params"] = gen.tokenizer.num_tokens, gen.tokenizer.num_params
    res["generator_peak_rss"] = peak()
    t1 = time.time()
    info = gen.sample_to_file(out_file, seed=0, sampler="ddim", steps=int(ddim_steps))
    res.update(generate_seconds=time.time() - t1, nonfinite=info["nonfinite"], ok=True)
""" + JOB_END
GIANT = "vit_giant_patch14_224"
# The giant's RPG: the recurrent part as above, a lighter U-Net (channels [4, 8], kernel 3) so that a
# billion parameters generate in tens of minutes on a shared 2-core CPU. The denoiser's size does not
# change the memory: one chunk of tokens is in flight whatever it is.
GIANT_GEN = {**RPG_GEN, "unet_channels": [4, 8], "kernel_size": 3}


def giant(arch: str, ddim_steps: int) -> dict:
    """One network of ``arch`` generated to benchmarks/work/, measured, then deleted."""
    out = WORK / "scale" / f"{arch}-meta-sample.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", GIANT_JOB, arch, json.dumps(GIANT_GEN), str(out), str(ddim_steps)],
                          capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    res = (json.loads(lines[-1][len("RESULT "):]) if lines
           else {"ok": False, "error": f"process exited with {proc.returncode}: {proc.stderr[-300:]}"})
    if res.get("ok"):
        from safetensors import safe_open

        with safe_open(str(out), "pt") as f:  # a whole, loadable file: its header names every tensor
            res["file_tensors"] = len(list(f.keys()))
        res["file_bytes"] = out.stat().st_size
    out.unlink(missing_ok=True)  # gigabytes: measured, not kept
    return res


def render_giant(payload: dict) -> None:
    r = payload["result"]
    gib = 2**30
    rows = (f"| {payload['arch']} | {fmt(r.get('params', 0) / 1e6, '.0f')}M | {r.get('num_tokens', '–')} "
            f"| {r.get('peak_rss', 0) / gib:.2f} GiB | {fmt(r.get('layout_peak_rss', 0) / gib, '.2f')} GiB "
            f"| {fmt(r.get('generate_seconds'), '.0f')} s | {fmt(r.get('file_bytes', 0) / 1e9, '.2f')} GB |")
    verdict = "reached" if r.get("ok") and r["peak_rss"] < 2 * gib else f"missed: {r.get('error', 'over 2 GiB')}"
    write_section("rpg_scale-giant", f"""## A billion parameters streamed (issue 62)

Command: {made_on(payload)}; one DDIM step, so the time is that of streaming, not of a real sampler.
The net's layout is read on the meta device (`timm.create_model` under `torch.device("meta")`: no weight is
allocated), an RPG like the one above with a lighter U-Net ({GIANT_GEN['unet_channels']}, kernel {GIANT_GEN['kernel_size']};
untrained: memory and time of generation do not depend on the fit)
generates one network straight into a safetensors file (`Generator.sample_to_file`, {payload['ddim_steps']} DDIM
step(s)), and the file is deleted once measured. Peak RSS from the kernel (`VmHWM`), whole process.
Target: under 2 GiB ({verdict}).

| net | parameters | tokens | peak RSS | RSS after the layout | time | file |
|---|---|---|---|---|---|---|
{rows}
""")


def job(cfg: dict, zoo_dir, gen_dir, out_file, ddim_steps: int, fit: bool, limit_gib: float | None) -> dict:
    def limit():
        if limit_gib:
            import resource
            b = int(limit_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (b, b))

    proc = subprocess.run([sys.executable, "-c", JOB, json.dumps(cfg), str(zoo_dir), str(gen_dir), str(out_file),
                           str(ddim_steps), "1" if fit else "0"], capture_output=True, text=True, preexec_fn=limit,
                          cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:  # killed before it could report (e.g. by the kernel's OOM killer)
        return {"ok": False, "error": f"process exited with {proc.returncode}: {proc.stderr[-300:]}"}
    return json.loads(lines[-1][len("RESULT "):])


def build_zoo(cfg: dict, path) -> float:
    from weightgen.config import parse_config
    from weightgen.zoo import build_zoo as build

    t = time.time()
    build(parse_config(cfg, "bench"), path, show_progress=False)
    return time.time() - t


def plot(rows: list[dict], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker in (("rpg", "o"), ("pdiff", "x")):
        pts = [(r["params"] / 1e6, r[method]["peak_rss"] / 2**30) for r in rows if r[method].get("ok")]
        fail = [(r["params"] / 1e6, r[method]["peak_rss"] / 2**30) for r in rows if not r[method].get("ok")]
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=f"{method}: generated")
        if fail:
            ax.scatter(*zip(*fail), marker="X", s=120, color="red", label=f"{method}: failed (out of memory)")
    ax.axhline(4, ls="--", color="gray", label="4 GiB target")
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel("peak RSS while generating (GiB)")
    ax.set_title("Generating one network to disk, 2-core CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def failure(error: str) -> str:
    """'could not allocate 25.1 GB' from torch's allocator message, else the message's start."""
    m = re.search(r"allocate (\d+) bytes", error)
    return f"could not allocate {int(m.group(1)) / 1e9:.1f} GB more" if m else error[:100]


def render(payload: dict) -> None:
    """The figure and the docs/benchmarks/rpg_scale.md section, from the JSON."""
    rows = payload["results"]
    figure = ROOT / "docs" / "figures" / "rpg_scale.png"
    plot([r for r in rows if r["params"]], figure)
    lines = [f"| net | parameters | tokens | RPG peak RSS | RPG time ({payload['ddim_steps']} DDIM steps) | RPG fit (brief) | "
             "p-diff flattening |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        g, p = r["rpg"], r["pdiff"]
        pd = (f"{p['peak_rss'] / 2**30:.2f} GiB, {p['generate_seconds']:.0f} s" if p.get("ok")
              else f"out of memory at {p['peak_rss'] / 2**30:.1f} GiB peak ({failure(p.get('error', ''))})")
        lines.append(f"| {r['arch']} | {fmt(r['params'] / 1e6 if r['params'] else None, '.1f')}M | {g.get('num_tokens', '–')} "
                     f"| {g['peak_rss'] / 2**30:.2f} GiB | {fmt(g.get('generate_seconds'), '.0f')} s "
                     f"| {fmt(g['fit'].get('fit_seconds'), '.0f')} s "
                     f"| {pd} |")
    write_section("rpg_scale", f"""## RPG at scale: memory and time to generate one network (issue 4)

Command: {made_on(payload)}.
One network generated straight into a safetensors file by a fresh process (`Generator.sample_to_file`);
peak RSS from the kernel (`VmHWM`), whole process (Python and torch included). RPG: tokens of 8192 values,
2 Mamba layers, d_model 256, U-Net channels {RPG_GEN['unet_channels']}, fitted {RPG_GEN['steps']} steps on a
2-checkpoint zoo (memory and time do not depend on the fit). Time with {payload['ddim_steps']} DDIM steps: the
Mamba pass over all tokens (once) plus the U-Net per token per step. p-diff: the same zoo flattened into one vector, its autoencoder and latent diffusion
(1 step each), under a {payload['limit_gib']:.0f} GiB address-space limit (where it failed, the peak is where it
stopped; for resnet18 it generated, and the figure is the sampling process's peak). Fit seconds come from the run that fitted the generators, with
the CPU shared with another job (indicative only). Target: the 198M-parameter net under 4 GiB.

{chr(10).join(lines)}

![peak RSS against parameters](../figures/rpg_scale.png)
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--ddim-steps", type=int, default=2)
    ap.add_argument("--limit-gib", type=float, default=20.0, help="address-space limit for the p-diff attempts")
    ap.add_argument("--reuse", action="store_true", help="reuse generators already fitted (and their fit numbers)")
    ap.add_argument("--render", action="store_true", help="only redraw the figure and table from the JSON")
    ap.add_argument("--giant", nargs="?", const=GIANT, default=None,
                    help=f"only the billion-parameter case: a timm net (default {GIANT}) laid out on the meta device, "
                         "generated to disk (writes the giant tag)")
    args = ap.parse_args()
    if args.render:
        return render(json.loads(result_path("rpg_scale").read_text()))
    if args.giant:
        started = time.time()
        res = giant(args.giant, args.ddim_steps)
        payload = {"benchmark": "rpg_scale", "tag": "giant", "command": command(), "machine": machine(),
                   "arch": args.giant, "ddim_steps": args.ddim_steps, "rpg_generator": GIANT_GEN,
                   "seconds": time.time() - started, "result": res}
        write_json("rpg_scale-giant", payload)
        render_giant(payload)
        print(json.dumps(res))
        return
    old = result_path("rpg_scale")
    previous = {r["arch"]: r for r in json.loads(old.read_text())["results"]} if args.reuse and old.is_file() else {}
    rows, started = [], time.time()
    for arch, kwargs in ARCHS:
        if args.only and arch not in args.only:
            continue
        base = WORK / "scale" / arch
        zoo_dir = base / "zoo"
        row = {"arch": arch, "net_kwargs": kwargs}
        rpg_cfg, pdiff_cfg = config(arch, kwargs, "rpg"), config(arch, kwargs, "pdiff")
        row["zoo_seconds"] = build_zoo(rpg_cfg, zoo_dir)
        print(f"== {arch}: zoo in {row['zoo_seconds']:.0f} s", flush=True)
        for method, cfg, limit in (("rpg", rpg_cfg, None), ("pdiff", pdiff_cfg, args.limit_gib)):
            gen_dir, out = base / f"{method}-generator", base / f"{method}-sample.safetensors"
            reuse = args.reuse and (gen_dir / "generator.json").is_file()
            fit = ({"ok": True, "reused": True} if reuse
                   else job(cfg, zoo_dir, gen_dir, out, args.ddim_steps, True, limit))
            res = job(cfg, zoo_dir, gen_dir, out, args.ddim_steps, False, limit) if fit["ok"] else fit
            if reuse:  # keep the fit numbers of the run that made the generator
                fit = {**fit, **previous.get(arch, {}).get(method, {}).get("fit", {})}
            res["fit"] = {k: fit.get(k) for k in ("fit_seconds", "fit_peak_rss", "error")}
            res.setdefault("peak_rss", fit.get("peak_rss"))
            if res.get("ok"):
                res["file_bytes"] = out.stat().st_size
                out.unlink()  # hundreds of MB: measured, not kept
                row["params"] = res["params"]
            row[method] = res
            print(f"   {method}: ok={res.get('ok')} peak {res['peak_rss'] / 2**30:.2f} GiB "
                  f"{res.get('generate_seconds', 0):.0f} s {res.get('error', '')}", flush=True)
        rows.append(row)
    for r in rows:
        r.setdefault("params", None)
    payload = {"benchmark": "rpg_scale", "command": command(), "machine": machine(), "ddim_steps": args.ddim_steps,
               "limit_gib": args.limit_gib, "rpg_generator": RPG_GEN, "pdiff_generator": PDIFF_GEN,
               "seconds": time.time() - started, "results": rows}
    write_json("rpg_scale", payload)
    render(payload)
    print(f"wrote benchmarks/results/rpg_scale/default.json ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
