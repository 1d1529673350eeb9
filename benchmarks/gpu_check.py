"""The GPU checks of issue 62 in one short run (a few minutes on one H100), for a session lent a device.

    python benchmarks/gpu_check.py                        # on the GPU machine: JSON to $OUT, or --out
    python benchmarks/gpu_check.py --dry-run --out DIR    # anywhere, on the CPU, every step at toy size (tested)
    python benchmarks/gpu_check.py --render FILE          # here: the JSON that came back, into the results and docs

Steps, each timed and recorded (a failed step is written down with its error and the next one runs):

1. ``distributed``: a tiny p-diff fitted by 2 ranks (``weightgen.fit_distributed``, as ``weightgen train --procs 2``)
   against one process, the largest weight difference next to the floor a 1e-7 change of the loss makes (the
   test of tests/test_distributed_fit.py). With 2 GPUs the ranks use nccl. With one GPU: the 2 ranks run gloo
   on the CPU, and 1 rank fits on the GPU under nccl (DistributedDataParallel on one device), against a plain
   fit on the GPU. Without a GPU (``--dry-run``): gloo alone.
2. ``fit``: p-diff and RPG fitted for a fixed number of steps on the default demo's zoo (built first, on the
   device), seconds per step; then the demo's 100 networks sampled as the demo does (DPM-Solver++, 25 steps),
   and how many of them are made in the time SGD trains one network of the zoo there.
3. ``generate_196m``: the 196M-parameter case of benchmarks/rpg_scale.py (timm ``convnext_large``, 10 classes,
   one input channel: 196,239,562 values; its RPG: 8192-value tokens, 2 Mamba layers, d_model 256, U-Net
   [8, 16, 32]), one network generated straight to a file with 2 DDIM steps, as there. The layout is read on
   the meta device and the RPG is not fitted: time and memory of generation do not depend on the fit. Peak GPU
   memory from torch, peak RSS from the kernel.

The lent machine's python3 (3.12) holds torch, timm, typer and safetensors but not diffusers, pydantic, mambapy or
mnist1d: carry them as wheels (``DEVICE_WHEELS``; ``--wheels`` prints the ``pip download`` of the versions installed
here, to run in the repository root after ``echo /.whl/ >> .git/info/exclude``). On the machine, from the repository
root: ``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=$PWD:/tmp/site
python3 benchmarks/gpu_check.py``, with a timeout that leaves time to run it again.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import torch
import yaml

from common import ROOT, command, machine, untrained_rpg, write_json, write_section

# What the lent machine's image lacks of weightgen's dependencies (and of theirs).
DEVICE_WHEELS = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "diffusers", "importlib_metadata",
                 "lazy-importer", "mambapy", "mnist1d")

# A tiny p-diff (tests/conftest.py's) on the demo's zoo: it learns nothing useful, and exercises every part of a
# distributed fit in seconds.
TINY_PDIFF = {"method": "pdiff", "fold_rate": 3, "kernel_size": 3, "enc_channels": [2, 2], "dec_channels": [2, 8],
              "denoiser_channels": [8, 16], "ae_steps": 30, "diffusion_steps": 30, "batch_size": 16, "ema": 0.9,
              "diffusion": {"timesteps": 50}}
# The demo's RPG: tokens of 64 of the demo's 394 values, as rpg-whole-cnn.yaml sizes RPG for that CNN.
DEMO_RPG = {"method": "rpg", "d_model": 256, "layers": 2, "batch_size": 4, "tokens_per_step": 64, "lr": 0.001}
DEMO_RPG_TOKEN = 64
FIT_STEPS = 300  # each of p-diff's two phases, and RPG
SAMPLE = {"n": 100, "sampler": "dpm", "steps": 25}  # the demo's

# benchmarks/rpg_scale.py's 196M case: its net and its RPG.
ARCH, ARCH_KWARGS = "convnext_large", {"input_size": 32}
SCALE_RPG = {"method": "rpg", "d_model": 256, "layers": 2, "unet_channels": [8, 16, 32], "kernel_size": 7,
             "steps": 10, "batch_size": 1, "tokens_per_step": 16, "lr": 1e-3}
SCALE_DDIM_STEPS, SCALE_TOKEN = 2, 8192

# --dry-run: the same steps at toy size on the CPU.
DRY = {"channels": [4, 4, 4], "epochs": 1, "checkpoints": 8, "fit_steps": 3, "sample_n": 4, "sample_steps": 3,
       "arch": "test_convnext", "rpg": {"d_model": 16, "unet_channels": [4, 8], "kernel_size": 3}, "rpg_token": 16,
       "token": 256, "ddim_steps": 1}


def parse(data: dict):
    from weightgen.config import parse_config

    return parse_config(data, "gpu_check")


def _max_diff(a, b) -> float:
    return max((v - b.components()[name].state_dict()[k].to(v.device)).abs().max().item()
               for name, m in a.components().items() for k, v in m.state_dict().items() if v.is_floating_point())


def compared_fit(cfg_data: dict, zoo_dir: Path, work: Path, procs: int, device: str) -> dict:
    """``procs`` ranks fit ``cfg_data``'s generator on ``device`` (torchrun); the largest weight difference to
    one plain process there, and the floor: the difference a loss scaled by 1 + 1e-7 makes."""
    from weightgen.diffusion.schedule import Diffusion
    from weightgen.fit_distributed import train_processes
    from weightgen.generators import load_generator
    from weightgen.pipeline import fit_generator
    from weightgen.zoo import Zoo

    cfg = parse({**cfg_data, "device": device})
    out = work / f"fit-{procs}-{device}"
    start = time.perf_counter()
    train_processes(cfg, zoo_dir, out, procs)
    seconds = time.perf_counter() - start
    ranked = load_generator(out, device)
    with Zoo.open(zoo_dir) as zoo:
        one = fit_generator(cfg, zoo, show_progress=False)[0]
        real = Diffusion.loss
        Diffusion.loss = lambda self, *a, **k: real(self, *a, **k) * (1 + 1e-7)
        try:
            rounded = fit_generator(cfg, zoo, show_progress=False)[0]
        finally:
            Diffusion.loss = real
    diff, floor = _max_diff(one, ranked), _max_diff(one, rounded)
    stats = json.loads((out / "fit_stats.json").read_text())
    return {"procs": procs, "device": device, "max_diff": diff, "floor": floor, "equal": diff <= 10 * floor + 1e-6,
            "seconds_with_startup": seconds, "fit_seconds": stats.get("fit_seconds")}


def demo_config(device: str, dry: bool) -> dict:
    """The default demo's config on ``device``; with ``dry``, a narrower CNN trained 1 epoch, 8 checkpoints kept."""
    demo = yaml.safe_load((ROOT / "weightgen" / "configs" / "demo.yaml").read_text())
    demo["device"] = device
    if dry:
        demo["net"]["channels"] = DRY["channels"]
        demo["train"]["epochs"] = DRY["epochs"]
        demo["zoo"]["checkpoints"] = DRY["checkpoints"]
    return demo


def demo_zoo(work: Path, device: str, dry: bool) -> tuple[Path, float]:
    """The demo's zoo, built on ``device`` by the first step that needs it: (folder, seconds the build took)."""
    from weightgen.zoo import build_zoo

    zoo_dir, done = work / "demo-zoo", work / "demo-zoo-seconds"
    if not done.is_file():
        start = time.perf_counter()
        build_zoo(parse(demo_config(device, dry)), zoo_dir, show_progress=False)
        done.write_text(str(time.perf_counter() - start))
    return zoo_dir, float(done.read_text())


def distributed(work: Path, gpus: int, dry: bool) -> dict:
    device = "cuda" if gpus else "cpu"
    steps = {"ae_steps": DRY["fit_steps"], "diffusion_steps": DRY["fit_steps"]} if dry else {}
    tiny = {**demo_config(device, dry), "generator": {**TINY_PDIFF, **steps}}
    zoo_dir, _ = demo_zoo(work, device, dry)
    if gpus >= 2:
        return {"gpus": gpus, "nccl_2_ranks": compared_fit(tiny, zoo_dir, work, 2, "cuda")}
    res = {"gpus": gpus, "gloo_2_ranks": compared_fit(tiny, zoo_dir, work, 2, "cpu")}
    if gpus == 1:
        res["note"] = "one GPU: 2 ranks ran gloo on the CPU, and 1 rank fitted on the GPU under nccl"
        res["nccl_1_rank"] = compared_fit(tiny, zoo_dir, work, 1, "cuda")
    else:
        res["note"] = "no GPU: gloo only"
    return res


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def fit(work: Path, device: str, dry: bool) -> dict:
    from weightgen.pipeline import fit_generator, sgd_seconds_per_member
    from weightgen.zoo import Zoo

    demo = demo_config(device, dry)
    steps = DRY["fit_steps"] if dry else FIT_STEPS
    zoo_dir, zoo_seconds = demo_zoo(work, device, dry)
    res = {"zoo_seconds": zoo_seconds, "steps": steps}
    rpg = {**DEMO_RPG, "steps": steps, **(DRY["rpg"] if dry else {})}
    token = DRY["rpg_token"] if dry else DEMO_RPG_TOKEN
    setups = {"pdiff": {**demo, "generator": {**demo["generator"], "ae_steps": steps, "diffusion_steps": steps}},
              "rpg": {**demo, "tokenizer": {"include": demo["tokenizer"]["include"], "token_size": token},
                      "generator": rpg}}
    with Zoo.open(zoo_dir) as zoo:
        sgd = sgd_seconds_per_member(zoo)
        res["sgd_seconds_per_member"] = sgd
        for name, data in setups.items():
            gen, stats = fit_generator(parse(data), zoo, show_progress=False)
            _sync(device)
            total_steps = steps * (2 if name == "pdiff" else 1)
            res[name] = {"fit_seconds": stats["fit_seconds"], "seconds_per_step": stats["fit_seconds"] / total_steps,
                         "device": str(gen.device)}
            if name == "pdiff":
                n = DRY["sample_n"] if dry else SAMPLE["n"]
                start = time.perf_counter()
                sample_steps = DRY["sample_steps"] if dry else SAMPLE["steps"]
                for _ in gen.sample(n, None, 0, 100, SAMPLE["sampler"], sample_steps):
                    pass
                _sync(device)
                seconds = time.perf_counter() - start
                res[name].update(sample_n=n, sample_steps=sample_steps, sample_seconds=seconds,
                                 models_per_sgd_member=n * sgd / seconds if sgd else None)
    return res


def peak_rss() -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except OSError:
        return None


def generate(work: Path, device: str, dry: bool) -> dict:
    """One network of the scale case generated straight to a file by an untrained RPG; the file is deleted."""
    from weightgen.nets.timm_net import timm_net

    arch, token = (DRY["arch"], DRY["token"]) if dry else (ARCH, SCALE_TOKEN)
    steps = DRY["ddim_steps"] if dry else SCALE_DDIM_STEPS
    start = time.perf_counter()
    with torch.device("meta"):
        state = timm_net(arch, (1, 8, 8), 10, **ARCH_KWARGS).state_dict()
    torch.manual_seed(0)
    gen = untrained_rpg(state, {**SCALE_RPG, **(DRY["rpg"] if dry else {})}, token, f"timm:{arch}", device)
    tok = gen.tokenizer
    res = {"arch": arch, "params": tok.num_params, "num_tokens": tok.num_tokens, "ddim_steps": steps,
           "setup_seconds": time.perf_counter() - start}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = work / "scale-sample.safetensors"
    start = time.perf_counter()
    info = gen.sample_to_file(out, seed=0, sampler="ddim", steps=steps)
    _sync(device)
    res.update(generate_seconds=time.perf_counter() - start, nonfinite=info["nonfinite"],
               file_bytes=out.stat().st_size, peak_rss=peak_rss(),
               peak_gpu_bytes=torch.cuda.max_memory_allocated() if device == "cuda" else None)
    out.unlink()
    return res


def render(payload: dict) -> None:
    """benchmarks/results/gpu_check/default.json and the section of docs/benchmarks/gpu_check.md."""
    write_json("gpu_check", payload)
    s, m = payload["steps"], payload["machine"]

    def cell(step, *keys, spec=".3g"):
        v = s.get(step, {})
        for k in keys:
            v = v.get(k, {}) if isinstance(v, dict) else None
        return "–" if v in (None, {}) else (format(v, spec) if isinstance(v, float) else str(v))

    d = s.get("distributed", {})
    dist_rows = "\n".join(f"| {k} | {r['procs']} | {r['device']} | {r['max_diff']:.3g} | {r['floor']:.3g} | "
                          f"{'yes' if r['equal'] else 'no'} |" for k, r in d.items() if isinstance(r, dict))
    errors = "\n".join(f"- {k}: {v['error']}" for k, v in s.items() if "error" in v) or "- none"
    write_section("gpu_check", f"""## GPU check (issue 62)

Command: `{payload['command']}` on {m.get('cuda') or 'no GPU'}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['date']}).

Distributed fit against one process ({d.get('note', '')}):

| run | ranks | device | largest weight difference | floor (loss x (1 + 1e-7)) | equal to tolerance |
|---|---|---|---|---|---|
{dist_rows}

Fits on the demo's zoo ({cell('fit', 'steps')} steps each; p-diff: both phases):
p-diff {cell('fit', 'pdiff', 'fit_seconds')} s
({cell('fit', 'pdiff', 'seconds_per_step')} s a step), RPG {cell('fit', 'rpg', 'fit_seconds')} s
({cell('fit', 'rpg', 'seconds_per_step')} s a step); the demo's {cell('fit', 'pdiff', 'sample_n')} networks sampled in
{cell('fit', 'pdiff', 'sample_seconds')} s, {cell('fit', 'pdiff', 'models_per_sgd_member')} networks in the time SGD
trains one there ({cell('fit', 'sgd_seconds_per_member')} s).

196M generation ({cell('generate_196m', 'arch')}, {cell('generate_196m', 'params')} values,
{cell('generate_196m', 'ddim_steps')} DDIM steps): {cell('generate_196m', 'generate_seconds')} s, peak GPU memory
{cell('generate_196m', 'peak_gpu_bytes')} bytes, peak RSS {cell('generate_196m', 'peak_rss')} bytes.

Failed steps:
{errors}
""")


def wheels_command() -> str:
    """``pip download`` of ``DEVICE_WHEELS`` at the versions installed here, for the lent machine's Python 3.12."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in DEVICE_WHEELS:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    platforms = " ".join(f"--platform {p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                                                      "manylinux2014_x86_64"))
    return (f"python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "
            f"{platforms} -d .whl {' '.join(pins)}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="every step at toy size on the CPU")
    ap.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json (default: $OUT)")
    ap.add_argument("--only", nargs="*", choices=("distributed", "fit", "generate_196m"), help="steps to run")
    ap.add_argument("--render", type=Path, default=None, help="a gpu_check.json that came back: write it to "
                                                              "benchmarks/results/gpu_check/ and the docs page")
    ap.add_argument("--wheels", action="store_true", help="print the pip download of the wheels the lent machine needs")
    args = ap.parse_args(argv)
    if args.wheels:
        print(wheels_command())
        return {}
    if args.render:
        payload = json.loads(args.render.read_text())
        render(payload)
        return payload
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if out is None:
        ap.error("give --out DIR (or set $OUT)")
    out.mkdir(parents=True, exist_ok=True)
    gpus = 0 if args.dry_run else torch.cuda.device_count()
    device = "cuda" if gpus else "cpu"
    run = command() if argv is None else "python " + shlex.join(["benchmarks/gpu_check.py", *argv])
    payload = {"benchmark": "gpu_check", "command": run, "machine": machine(), "dry_run": args.dry_run,
               "steps": {}}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    steps = (("distributed", lambda: distributed(work, gpus, args.dry_run)),
             ("fit", lambda: fit(work, device, args.dry_run)),
             ("generate_196m", lambda: generate(work, device, args.dry_run)))
    try:
        for name, step in steps:
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            try:
                res = step()
            except Exception as e:  # recorded: the next step still runs on the lent machine
                traceback.print_exc()
                res = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            res["step_seconds"] = time.perf_counter() - start
            payload["steps"][name] = res
            (out / "gpu_check.json").write_text(json.dumps(payload, indent=1))  # what is done survives a timeout
            print(f"== {name}: {json.dumps(res)}", flush=True)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    return payload


if __name__ == "__main__":
    main()
