"""Fit a generator, or sample one, from several processes.

``torchrun --nproc_per_node N -m weightgen.fit_distributed train CONFIG --zoo DIR --out DIR`` fits
under DistributedDataParallel (``weightgen train --procs N`` starts it): every rank draws the same
global batch from the same seeded streams, ``Diffusion.loss`` keeps this rank's rows of it, DDP
averages the gradients, and every rank takes the same optimizer step. The result is the one-process
fit's, up to the order of floating-point sums. Rank 0 alone writes the checkpoint and the generator.
The whole model runs on every rank outside ``Diffusion.loss`` (RPG's recurrent backbone, p-diff's
autoencoder): there the ranks repeat the work rather than split it. BatchNorm inside the denoiser (RPG's
U-Net) normalizes each rank's rows by their own statistics, as DistributedDataParallel does without
SyncBatchNorm, so such a fit is close to the one-process fit but not the same; p-diff's and G.pt's
denoisers have no BatchNorm.

``... -m weightgen.fit_distributed sample GENERATOR --out DIR --count N`` writes networks ``rank``,
``rank + world``, ... from each rank (disjoint indices) and rank 0 the one ``samples.json``
(``weightgen sample --procs N``).

gloo on CPU, nccl when every rank has a GPU of its own; ``torchrun --nnodes`` spans machines.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from weightgen.config import ExperimentConfig, dump_config, load_config
from weightgen.diffusion.schedule import sharding
from weightgen.zoo.distributed import backend_for


class DistributedFitError(ValueError):
    """A distributed fit, sampling or judging (weightgen/eval_distributed.py) that cannot run as asked."""


def batch_rows(cfg: ExperimentConfig, num_train: int) -> int:
    """Networks in one global batch of ``cfg``'s fit on a zoo of ``num_train`` training networks:
    the most ranks a batch can be split over."""
    spec = cfg.generator
    return spec.batch_size if spec.method == "gpt" else min(spec.batch_size, num_train)


def check_procs(cfg: ExperimentConfig, num_train: int, procs: int) -> None:
    if procs < 1:
        raise DistributedFitError(f"--procs must be at least 1, got {procs}")
    rows = batch_rows(cfg, num_train)
    if procs > rows:
        raise DistributedFitError(
            f"--procs {procs} is more than the {rows} networks of one batch (generator.batch_size "
            f"{cfg.generator.batch_size}, {num_train} training networks in the zoo): give --procs {rows} or fewer")


def torchrun(procs: int, args: list[str], what: str, module: str = "weightgen.fit_distributed") -> None:
    """Run ``module`` with ``args`` in ``procs`` processes on this machine (torchrun, standalone); their output goes
    to this terminal, and a failure raises ``DistributedFitError`` naming ``what``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
           "-m", module, *args]
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise DistributedFitError(f"the {procs}-process {what} failed (torchrun exited with {code}; its output is above)")


def train_processes(cfg: ExperimentConfig, zoo: str | Path, out: str | Path, procs: int,
                    checkpoint_every: int = 1000) -> None:
    """Fit ``cfg``'s generator on ``zoo`` with ``procs`` processes on this machine and save it to
    ``out``; a failed fit leaves its checkpoint there, and running again resumes."""
    with tempfile.TemporaryDirectory(prefix="weightgen-fit-") as tmp:
        config = Path(tmp) / "fit.yaml"
        config.write_text(dump_config(cfg))
        torchrun(procs, ["train", str(config), "--zoo", str(zoo), "--out", str(out),
                         "--checkpoint-every", str(checkpoint_every)], f"fit of {cfg.name}")


def sample_processes(generator: str | Path, out: str | Path, procs: int, n: int, seed: int, sampler: str,
                     steps: int | None, stream: bool | None, batch_size: int) -> dict:
    """Write ``n`` networks of a saved generator to ``out`` from ``procs`` processes; returns samples.json."""
    if procs > n:
        raise DistributedFitError(f"--procs {procs} is more than the {n} networks asked for (--n): give --procs {n} or fewer")
    args = ["sample", str(generator), "--out", str(out), "--count", str(n), "--seed", str(seed), "--sampler", sampler,
            "--batch-size", str(batch_size)]
    if steps is not None:
        args += ["--steps", str(steps)]
    if stream is not None:
        args += ["--stream" if stream else "--no-stream"]
    torchrun(procs, args, f"sampling of {generator}")
    return json.loads((Path(out) / "samples.json").read_text())


def init_ranks() -> tuple[int, int]:
    """Join the process group torchrun set up (gloo on CPU, nccl when every rank has a GPU of its own, then this
    rank's GPU the current device); returns (rank, world size)."""
    backend = backend_for(int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1))))
    dist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    # Several processes on a few cores: threads shared out keep them from fighting.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    return dist.get_rank(), dist.get_world_size()


def _train(args) -> None:
    from weightgen.checkpointing import CHECKPOINT_FILE
    from weightgen.pipeline import fit_generator
    from weightgen.zoo import Zoo

    rank, world = init_ranks()
    try:
        cfg = load_config(args.config)
        zoo = Zoo.open(args.zoo)
        check_procs(cfg, len(zoo.members("train")), world)
        with sharding(rank, world):
            gen, stats = fit_generator(cfg, zoo, show_progress=rank == 0, checkpoint_dir=Path(args.out),
                                       checkpoint_every=args.checkpoint_every, write=rank == 0)
        if rank == 0:
            gen.save(args.out)
            (Path(args.out) / CHECKPOINT_FILE).unlink(missing_ok=True)
            (Path(args.out) / "fit_stats.json").write_text(json.dumps({**stats, "procs": world}, indent=1))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _sample(args) -> None:
    from weightgen.generators import load_generator
    from weightgen.pipeline import join_samples, write_samples

    rank, world = init_ranks()
    try:
        device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
        gen = load_generator(args.generator, device)
        write_samples(gen, Path(args.out), args.count, args.seed, args.batch_size, args.sampler, args.steps,
                      stream=args.stream, shard=(rank, world))
        dist.barrier()
        if rank == 0:
            join_samples(Path(args.out), world)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("config")
    t.add_argument("--zoo", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--checkpoint-every", type=int, default=1000)
    s = sub.add_parser("sample")
    s.add_argument("generator")
    s.add_argument("--out", required=True)
    s.add_argument("--count", type=int, default=10)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sampler", default="ddpm")
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=100)
    s.add_argument("--stream", dest="stream", action="store_true", default=None)
    s.add_argument("--no-stream", dest="stream", action="store_false")
    args = parser.parse_args(argv)
    (_train if args.command == "train" else _sample)(args)


if __name__ == "__main__":
    main()
