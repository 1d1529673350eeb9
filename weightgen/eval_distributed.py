"""Judge sampled networks from several processes.

``torchrun --nproc_per_node N -m weightgen.eval_distributed SAMPLES --zoo DIR --out DIR`` (``weightgen eval
--procs N`` starts it on this machine; ``torchrun --nnodes`` spans machines that share the two folders) splits
the costly part of judging, ``judging.score_networks``, over ranks: each rank reads its contiguous block of the
samples and scores it, and its block of every baseline group too (the originals, the weight average, the runs'
averages, the noise-added originals, the held-out runs), each network's metrics, failure sets and nearest L2
distance to the training checkpoints. Rank 0 gathers the blocks in rank order and alone runs
``judging.judge_scored``: max IoU against the originals' failure sets, the originals' distances among
themselves (one M x M search), the verdicts and the report. Each network's numbers depend on that network
alone, so the report is the one process's, up to the order of floating-point sums.

gloo on CPU, nccl when every rank has a GPU of its own (then the net runs on the rank's GPU). A fields zoo is
judged by the field report, which compares whole sets of fields: it runs in one process.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist

from weightgen.fit_distributed import DistributedFitError, init_ranks, torchrun


def check_procs(num_samples: int, procs: int, mode: str) -> None:
    """One line when ``procs`` processes cannot judge ``num_samples`` networks of a zoo of ``mode``."""
    if procs < 1:
        raise DistributedFitError(f"--procs must be at least 1, got {procs}")
    if procs > 1 and mode == "fields":
        raise DistributedFitError("field judging compares whole sets of fields and runs in one process: drop --procs")
    if procs > num_samples:
        raise DistributedFitError(f"--procs {procs} is more than the {num_samples} networks to judge: "
                                  f"give --procs {num_samples} or fewer")


def eval_processes(samples: str | Path, zoo: str | Path, out: str | Path, procs: int, title: str) -> dict:
    """Judge the networks in ``samples`` against ``zoo`` with ``procs`` processes on this machine; rank 0
    writes the report to ``out``, which is returned."""
    torchrun(procs, [str(samples), "--zoo", str(zoo), "--out", str(out), "--title", title],
             f"judging of {samples}", module="weightgen.eval_distributed")
    return json.loads((Path(out) / "report.json").read_text())


def _judge(args) -> None:
    from weightgen.evaluate.judging import Scored, block, judge_scored, score_networks
    from weightgen.pipeline import checked_first, judge_inputs, read_samples
    from weightgen.zoo import Zoo

    rank, world = init_ranks()
    try:
        with Zoo.open(args.zoo) as zoo:
            meta, _ = read_samples(Path(args.samples))
            n = meta["n"]
            check_procs(n, world, zoo.config.zoo.mode)
            batches = read_samples(Path(args.samples), rows=block(n, (rank, world)))[1]
            net = zoo.build_net()
            if dist.get_backend() == "nccl":
                net = net.to(f"cuda:{torch.cuda.current_device()}")
            inputs = judge_inputs(zoo, zoo.config)
            scored = score_networks(net, generated_stacked=checked_first(net, batches, "the samples"),
                                    names=meta["generated_names"], shard=(rank, world), **inputs)
            blocks = [None] * world if rank == 0 else None
            dist.gather_object(scored, blocks, dst=0)
            if rank == 0:
                joined = {key: Scored.cat(b[key] for b in blocks) for key in scored}
                judge_scored(joined, net, inputs["task"], inputs["train_stacked"], meta["generated_names"],
                             Path(args.out), args.title, inputs["recalibrate"])
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("samples", help="a folder written by `weightgen sample`")
    parser.add_argument("--zoo", required=True)
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument("--title", default="")
    _judge(parser.parse_args(argv))


if __name__ == "__main__":
    main()
